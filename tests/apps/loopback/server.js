// An app that listens on 127.0.0.1 only: reachable from inside its container, not from
// the ingress or other containers. ferry's health check must say so.
const http = require('node:http');
const port = Number(process.env.PORT || 3000);
http
  .createServer((req, res) => res.end('ok\n'))
  .listen(port, '127.0.0.1', () => console.log(`listening on 127.0.0.1:${port}`));
