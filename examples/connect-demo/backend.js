// A tiny TCP backend for the connect-steering demo: answers every connection with its name.
// Usage: node backend.js HOST PORT NAME
const net = require('node:net');

const [host, port, name] = process.argv.slice(2);
if (!host || !port || !name) {
  console.error('usage: node backend.js HOST PORT NAME');
  process.exit(2);
}
net
  .createServer((socket) => socket.end(`${name}\n`))
  .listen(Number(port), host, () => console.log(`${name} listening on ${host}:${port}`));
