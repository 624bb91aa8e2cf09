// A plain Node server with one dependency, installed by pnpm.
const http = require('node:http');
const ms = require('ms');

const port = Number(process.env.PORT || 3000);
http
  .createServer((req, res) => {
    if (req.url === '/healthz') return res.end('ok\n');
    res.end(`installed by pnpm: ms says ${ms(90000)}\n`);
  })
  .listen(port, () => console.log(`pnpm app listening on ${port}`));
