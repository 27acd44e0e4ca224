'use strict';
// CouchDB-compatible test server for dfarchive: express-pouchdb on PouchDB.
// Usage: node server.js --port PORT [--dir PATH] [--host ADDRESS]
//   --port 0 picks a free port; "LISTENING <port>" is printed once it accepts requests.
//   --dir keeps the databases on disk (leveldb) across restarts; in memory without it.
//   --host is the address to listen on (127.0.0.1 by default).
// Admin credentials come from COUCHDB_USER / COUCHDB_PASSWORD (never from argv). With an
// admin set, requests without credentials get 401, like CouchDB 3's admin-only databases.
const path = require('path');
const { parseArgs } = require('util');
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    dir: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
  },
});
const user = process.env.COUCHDB_USER;
const password = process.env.COUCHDB_PASSWORD;

let PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-mapreduce'))
  .plugin(require('pouchdb-replication'));
if (args.dir) {
  PouchDB = PouchDB.plugin(require('pouchdb-adapter-leveldb'))
    .defaults({ adapter: 'leveldb', prefix: path.resolve(args.dir) + path.sep });
} else {
  PouchDB = PouchDB.plugin(require('pouchdb-adapter-memory')).defaults({ adapter: 'memory' });
}

process.on('uncaughtException', (err) => console.error('uncaughtException:', err));
process.on('unhandledRejection', (err) => console.error('unhandledRejection:', err));

const couch = require('express-pouchdb')(PouchDB, {
  inMemoryConfig: true,
  logPath: args.dir ? path.join(args.dir, 'log.txt') : require('os').devNull,
});

// CouchDB 3 databases are admin-only by default: refuse anonymous requests but the welcome.
function requireUser(req, res) {
  const anonymous = !req.headers.authorization && !/AuthSession=/.test(req.headers.cookie || '');
  const open = (req.method === 'GET' && req.url === '/') || req.url.startsWith('/_session');
  if (!user || !anonymous || open) return false;
  res.writeHead(401, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify({ error: 'unauthorized', reason: 'Authentication required.' }));
  return true;
}

// CouchDB 3 takes {"username": ...} at POST /_session as well as {"name": ...}
// (ibmcloudant's session authenticator sends "username"); express-pouchdb reads "name".
function handleSession(req, res) {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    try {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
      req.body = { ...body, name: body.name ?? body.username };
      req._body = true; // tells body-parser the body is already parsed
    } catch (err) {
      req.body = {};
      req._body = true;
    }
    couch(req, res);
  });
}

function handle(req, res) {
  if (requireUser(req, res)) return;
  const json = /json/.test(req.headers['content-type'] || '');
  if (req.method === 'POST' && req.url.split('?')[0] === '/_session' && json) {
    handleSession(req, res);
  } else {
    couch(req, res);
  }
}

function listen() {
  const server = http.createServer(handle);
  server.listen(Number(args.port), args.host, () => {
    console.log(`LISTENING ${server.address().port}`);
  });
  server.on('error', (err) => {
    console.error('cannot listen:', err.message);
    process.exit(1);
  });
}

// On disk, keep the cookie-signing secret too, so sessions survive a restart as in CouchDB.
function sessionSecret() {
  const file = path.join(args.dir, '.session_secret');
  if (!fs.existsSync(file)) fs.writeFileSync(file, crypto.randomBytes(16).toString('hex'));
  return fs.readFileSync(file, 'utf8');
}

const settings = [];
if (user) settings.push(['admins', user, password || '']);
if (args.dir) settings.push(['couch_httpd_auth', 'secret', sessionSecret()]);
(function configure() {
  const setting = settings.shift();
  if (!setting) return listen();
  couch.couchConfig.set(...setting, (err) => {
    if (err) throw err;
    configure();
  });
})();
