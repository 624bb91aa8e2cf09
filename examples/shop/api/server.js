// api: answers on PORT (4000) with the generation it belongs to.
const http = require('node:http');

const port = Number(process.env.PORT || 4000);
const generation = process.env.FERRY_GENERATION || 'unknown';

http
  .createServer((req, res) => {
    if (req.url === '/healthz') return res.end('ok\n');
    res.end(`api of generation ${generation}\n`);
  })
  .listen(port, () => console.log(`api listening on ${port}`));
