// web: answers on PORT (3000), asks the api for its answer, and reports its own generation.
const http = require('node:http');

const port = Number(process.env.PORT || 3000);
const apiUrl = process.env.API_URL || 'http://api.cloud66.local:4000';

const server = http
  .createServer((req, res) => {
    if (req.url === '/healthz') return res.end('ok\n');
    http
      .get(`${apiUrl}/`, (api) => {
        let body = '';
        api.on('data', (c) => (body += c));
        api.on('end', () => res.end(`web says hi; api says: ${body.trim()}\n`));
      })
      .on('error', (e) => {
        res.statusCode = 502;
        res.end(`web could not reach the api: ${e.code || e.message}\n`);
      });
  })
  .listen(port, () => console.log(`web listening on ${port}`));

// ferry stops a container with SIGTERM after its drain: finish what is in flight, then go.
process.on('SIGTERM', () => {
  console.log('web: SIGTERM, closing');
  server.close(() => process.exit(0));
});
