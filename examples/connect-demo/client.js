// Connects COUNT times to HOST:PORT, one connection after another, and prints who answered.
// Usage: node client.js HOST PORT COUNT
const net = require('node:net');

const [host, port, count] = process.argv.slice(2);

function once() {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port: Number(port) });
    let reply = '';
    socket.setTimeout(2000, () => socket.destroy(new Error('timed out')));
    socket.on('data', (chunk) => (reply += chunk));
    socket.on('end', () => resolve(reply.trim()));
    socket.on('error', (err) => resolve(`error: ${err.code || err.message}`));
  });
}

(async () => {
  const answers = [];
  for (let i = 0; i < Number(count || 1); i++) answers.push(await once());
  console.log(answers.join(' '));
})();
