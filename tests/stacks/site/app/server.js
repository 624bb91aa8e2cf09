// The ingress tests' app: says which service, generation and container answered, shows
// the headers it got, hashes uploads, streams downloads, echoes WebSocket-style upgrades,
// lists every request it saw (so a test can prove a smuggled one never arrived), shows the
// request line as it arrived, and refuses a body at /early before reading any of it.
const http = require('node:http');
const net = require('node:net');
const dgram = require('node:dgram');
const crypto = require('node:crypto');
const os = require('node:os');

const port = Number(process.env.PORT || 3000);
const who = `${process.env.SERVICE || 'app'} ${process.env.FERRY_GENERATION || '?'} ${os.hostname()}`;
const seen = [];
let failing = false;

// Download bytes: a fixed pseudo-random block repeated, so the client can hash what it
// expects without the server sending a hash first.
const block = crypto.createHash('sha512').update('ferry').digest();
const chunk = Buffer.alloc(1 << 20);
for (let i = 0; i < chunk.length; i += block.length) block.copy(chunk, i);

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://app');
  if (url.pathname !== '/healthz') seen.push(`${req.method} ${url.pathname}`);
  switch (url.pathname) {
    case '/healthz':
      res.statusCode = failing ? 500 : 200;
      return res.end(failing ? 'failing\n' : 'ok\n');
    case '/fail':
      failing = true;
      return res.end(`${who} now fails its health check\n`);
    case '/slow': {
      // Answers after ?ms= milliseconds (at most 30 s): a request held open.
      const ms = Math.min(Number(url.searchParams.get('ms')) || 1000, 30000);
      return setTimeout(() => res.end(`${who}\n`), ms);
    }
    case '/headers':
      return res.end(JSON.stringify(req.headers) + '\n');
    case '/request':
      return res.end(JSON.stringify({ method: req.method, url: req.url, host: req.headers.host }) + '\n');
    case '/early':
      // A final answer before the body is read, as an upload limit does.
      res.statusCode = 413;
      res.setHeader('Connection', 'close');
      return res.end('too large\n');
    case '/seen':
      return res.end(seen.join('\n') + '\n');
    case '/upload': {
      const hash = crypto.createHash('sha256');
      let bytes = 0;
      req.on('data', (d) => { hash.update(d); bytes += d.length; });
      req.on('end', () => res.end(`${who} ${bytes} ${hash.digest('hex')}\n`));
      return;
    }
    case '/download': {
      let left = Number(url.searchParams.get('mb') || 1);
      res.setHeader('Content-Length', left * chunk.length);
      res.setHeader('X-Who', who);
      const more = () => {
        while (left > 0) {
          left -= 1;
          if (!res.write(chunk)) return res.once('drain', more);
        }
        res.end();
      };
      return more();
    }
    default:
      return res.end(`${who}\n`);
  }
});

// An upgrade is answered with 101 and then every byte is echoed back.
server.on('upgrade', (req, socket, head) => {
  seen.push(`UPGRADE ${req.url}`);
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n');
  socket.write(`${who}\n`);
  if (head.length) socket.write(head);
  socket.pipe(socket);
});

// L4: a TCP server that names itself and echoes, and a UDP one that answers each
// datagram with its name and the datagram. A client that resets its connection must not
// take the whole process down (an unhandled 'error' would).
net
  .createServer((socket) => {
    socket.on('error', () => socket.destroy());
    socket.write(`${who}\n`);
    socket.pipe(socket);
  })
  .listen(Number(process.env.TCP_PORT || 7000));
const udp = dgram.createSocket('udp4');
udp.on('message', (msg, from) => udp.send(`${who} ${msg}`, from.port, from.address));
udp.bind(Number(process.env.UDP_PORT || 7001));

// Expect: 100-continue: /early refuses without asking for the body; the rest go on.
server.on('checkContinue', (req, res) => {
  if (req.url.startsWith('/early')) {
    res.statusCode = 413;
    res.setHeader('Connection', 'close');
    return res.end('too large\n');
  }
  res.writeContinue();
  server.emit('request', req, res);
});

server.keepAliveTimeout = 5000;
server.listen(port, () => console.log(`${who} listening on ${port}`));

process.on('SIGTERM', () => {
  console.log(`${who}: SIGTERM, closing`);
  server.close(() => process.exit(0));
  // Idle keep-alive connections would hold close() open.
  server.closeIdleConnections();
});
