const http = require('node:http');
const greeting = require('@ferry-private/greeting');
const port = Number(process.env.PORT || 3000);
http
  .createServer((req, res) => res.end(req.url === '/healthz' ? 'ok\n' : `${greeting('ferry')}\n`))
  .listen(port);
