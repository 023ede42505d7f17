// A bcoin full node made to behave like Bitcoin Core's regtest, for lnp-host's tests and regtest profiles.
//
//   LNP_REGTEST_API_KEY=KEY node launcher.js --rpc-port 18443 [--wallet-port 18444] [--prefix DIR] [--exit-with-parent]
//
// The API key (the RPC password) comes from the environment, never the command line, which every
// local user can read. Prints one JSON line on stdout: {"ready": true, ...} once JSON-RPC answers, or
// {"error": MESSAGE, "port": N} when a port is taken (then exits with status 1). Differences from stock
// bcoin that this removes (see ../shared/notes/regtest-node.md): Core's address prefixes and RPC
// port, segwit/CSV active from genesis and CLTV from block 1, wallet RPC calls on the node's RPC port, and a
// `sendrawtransaction` that reports mempool rejections with bitcoind's error codes instead of
// answering with the txid regardless (and, as bitcoind, answers the txid for a transaction its
// mempool already holds, also when two sends of it race).
'use strict';

const fs = require('fs');
const path = require('path');
const networks = require('bcoin/lib/protocol/networks');
const Network = require('bcoin/lib/protocol/network');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const rpcPort = parseInt(arg('rpc-port', '18443'), 10);
const walletPort = parseInt(arg('wallet-port', String(rpcPort + 1)), 10);
const apiKey = process.env.LNP_REGTEST_API_KEY;
delete process.env.LNP_REGTEST_API_KEY;
if (!apiKey) {
  process.stderr.write('regtest node: set LNP_REGTEST_API_KEY (the RPC password)\n');
  process.exit(2);
}
const prefix = arg('prefix', null);

const regtest = networks.regtest;
regtest.rpcPort = rpcPort;
regtest.walletPort = walletPort;
regtest.port = rpcPort + 2;  // never bound: the node does not listen
regtest.addressPrefix = {
  pubkeyhash: 0x6f, scripthash: 0xc4, witnesspubkeyhash: 0x06, witnessscripthash: 0x0a, bech32: 'bcrt'
};
regtest.keyPrefix = {
  privkey: 0xef, xpubkey: 0x043587cf, xprivkey: 0x04358394, xpubkey58: 'tpub', xprivkey58: 'tprv', coinType: 1
};
regtest.block.bip34height = 1;
regtest.block.bip65height = 1;
regtest.block.bip66height = 1;
for (const name of ['csv', 'segwit']) {
  regtest.deployments[name].window = 1;
  regtest.deployments[name].threshold = 1;
  regtest.deployments[name].startTime = 0;
}
Network.set('regtest');

const bcoin = require('bcoin');
// Core's regtest has segwit and CSV active from genesis; bcoin's BIP9 versionbits would activate them a few
// blocks later even with a window of 1, and so refuse a block 1 with a witness commitment (lnprototest submits one).
const Chain = require('bcoin/lib/blockchain/chain');
const { thresholdStates } = require('bcoin/lib/blockchain/common');
const bip9State = Chain.prototype.getState;
Chain.prototype.getState = async function getState(prev, deployment) {
  if (deployment.name === 'csv' || deployment.name === 'segwit')
    return thresholdStates.ACTIVE;
  return bip9State.call(this, prev, deployment);
};
const { RPCError } = require('bweb');
const TX = require('bcoin/lib/primitives/tx');

const node = new bcoin.FullNode({
  network: 'regtest',
  memory: prefix === null,
  prefix: prefix || undefined,
  listen: false,
  seeds: [],
  nodes: [],
  maxInbound: 0,
  httpHost: '127.0.0.1',
  httpPort: rpcPort,
  apiKey,
  indexTX: true,
  indexAddress: true,
  replaceByFee: true,
  workers: false,
  logLevel: 'warning',
  logConsole: false,
  'wallet-http-port': walletPort,
  'wallet-prefix': prefix ? path.join(prefix, 'wallet') : undefined,
  'wallet-http-host': '127.0.0.1',
});
node.use(require('bcoin/lib/wallet/plugin'));

// bitcoind's sendrawtransaction: errors when the mempool refuses, and when the tx is already mined.
async function sendRawTransaction(args, help) {
  if (help || args.length < 1 || args.length > 2)
    throw new RPCError(-1, 'sendrawtransaction "hexstring" ( maxfeerate )');
  let tx;
  try {
    tx = TX.fromRaw(Buffer.from(String(args[0]), 'hex'));
  } catch (e) {
    throw new RPCError(-22, 'TX decode failed');
  }
  if (await node.chain.db.hasCoins(tx))
    throw new RPCError(-27, 'Transaction already in block chain');
  if (node.mempool.hasEntry(tx.hash()))
    return tx.txid();
  let missing;
  try {
    missing = await node.mempool.addTX(tx);
  } catch (e) {
    // A concurrent send of the same transaction got in first (both checks above were passed
    // before either was added): bitcoind answers the txid, and so do we.
    if (e.type === 'VerifyError' && e.reason === 'txn-already-in-mempool')
      return tx.txid();
    if (e.type === 'VerifyError' && e.reason === 'txn-already-known')
      throw new RPCError(-27, 'Transaction already in block chain');
    if (e.type === 'VerifyError') {
      const code = e.reason.includes('missing') ? -25 : -26;  // a double spend ('duplicate') too
      throw new RPCError(code, e.reason);
    }
    throw new RPCError(-25, e.message);
  }
  if (missing && missing.length)  // kept as an orphan: bitcoind refuses these
    throw new RPCError(-25, 'Missing inputs');
  node.relay(tx);
  return tx.txid();
}

(async () => {
  await node.ensure();  // creates the prefix directories of a persistent chain
  if (prefix)
    fs.mkdirSync(path.join(prefix, 'wallet'), { recursive: true });
  await node.open();
  await node.connect();
  node.rpc.calls.sendrawtransaction = sendRawTransaction;
  const wallet = node.require('walletdb');
  node.rpc.mount(wallet.rpc);
  process.stdout.write(JSON.stringify({ ready: true, rpcPort, walletPort, pid: process.pid,
    prefix: prefix && path.resolve(prefix) }) + '\n');
})().catch((e) => {
  if (e.code === 'EADDRINUSE') {  // a plain answer the caller can show, not a stack trace
    process.stdout.write(JSON.stringify({ error: `port ${e.port} is in use`, port: e.port }) + '\n');
    process.stderr.write(`regtest node: port ${e.port} is in use\n`);
  } else {
    process.stderr.write(`regtest node failed: ${e.stack || e}\n`);
  }
  process.exit(1);
});

async function shutdown() {
  // Closing waits for open HTTP connections and pending work; a stop must not hang on them.
  setTimeout(() => process.exit(0), 3000).unref();
  try {
    await node.close();
  } finally {
    process.exit(0);
  }
}

for (const sig of ['SIGINT', 'SIGTERM'])
  process.on(sig, shutdown);

// Started by a node that was killed (SIGKILL) gets no signal: notice the orphaning and stop too.
if (process.argv.includes('--exit-with-parent')) {
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent)
      shutdown();
  }, 500).unref();
}
