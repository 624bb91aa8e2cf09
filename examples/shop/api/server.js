// api: answers on PORT (4000) with the generation it belongs to. /slow?ms=N answers after N
// milliseconds (at most 30 s), to show a request in flight surviving a deploy.
const http = require('node:http');

const port = Number(process.env.PORT || 4000);
const generation = process.env.FERRY_GENERATION || 'unknown';

const server = http
  .createServer((req, res) => {
    const url = new URL(req.url, 'http://api');
    if (url.pathname === '/healthz') return res.end('ok\n');
    const answer = () => res.end(`api of generation ${generation}\n`);
    if (url.pathname === '/slow') {
      const ms = Math.min(Number(url.searchParams.get('ms')) || 1000, 30000);
      return setTimeout(answer, ms);
    }
    answer();
  })
  .listen(port, () => console.log(`api listening on ${port}`));

// ferry stops a container with SIGTERM after its drain: finish what is in flight, then go.
process.on('SIGTERM', () => {
  console.log('api: SIGTERM, closing');
  server.close(() => process.exit(0));
});
