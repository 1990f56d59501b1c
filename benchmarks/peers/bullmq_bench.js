// BullMQ: the worker and the producer, one file (CommonJS; `bullmq` and `ioredis` come from
// NODE_PATH, the harness's npm folder ~/.cache/ojs-bench/bullmq/node_modules).
//
//   node bullmq_bench.js worker  --redis URL [--concurrency C]
//   node bullmq_bench.js enqueue --redis URL --kind single|bulk --jobs N [--batch B] [--warmup W]
//   node bullmq_bench.js prefill --redis URL --jobs N [--batch B]
//   node bullmq_bench.js latency --redis URL --jobs N [--warmup W] [--gap-ms G]
//
// The producer protocol (READY / GO / one JSON line / BYE) is the one of peers/_common.py.
// Settings: BullMQ's defaults (ioredis, a job is locked while it runs and a stalled job is moved
// back to wait: at least once; completed jobs are kept, as ojs keeps them) except the worker's
// `concurrency` (BullMQ's default is 1; the harness passes the same C as every peer, default
// 10). BullMQ has no multiprocess launcher: the harness starts P worker processes.
// `queue.add` is one enqueue, `queue.addBulk` one batch (one MULTI per batch).
// Latency clock: process.hrtime.bigint() (CLOCK_MONOTONIC, the same for every process on the
// machine) in both the producer and the handler; Node has no nanosecond wall clock.
'use strict';

const { Queue, Worker } = require('bullmq');
const IORedis = require('ioredis');
const readline = require('readline');

const QUEUE = 'bench';
const COUNTER = 'bench:done';
const LATENCY = 'bench:lat';

function parseArgs(argv) {
  const args = { mode: argv[0], kind: 'single', jobs: 1000, batch: 1000, warmup: 200, gapMs: 10,
    concurrency: 10, timeout: 10, startTimeout: 60, budgetS: 0, redis: process.env.BENCH_REDIS_URL };
  const names = { '--redis': 'redis', '--kind': 'kind', '--jobs': 'jobs', '--batch': 'batch',
    '--warmup': 'warmup', '--gap-ms': 'gapMs', '--concurrency': 'concurrency', '--timeout': 'timeout',
    '--start-timeout': 'startTimeout', '--budget-s': 'budgetS' };
  for (let k = 1; k < argv.length; k += 2) {
    const name = names[argv[k]];
    if (!name) throw new Error(`unknown option ${argv[k]}`);
    args[name] = ['redis', 'kind'].includes(name) ? argv[k + 1] : Number(argv[k + 1]);
  }
  return args;
}

function connectionOptions(url) {
  const u = new URL(url);
  const db = u.pathname && u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0;
  const options = { host: u.hostname, port: Number(u.port || 6379), db, maxRetriesPerRequest: null };
  // The harness's private Redis requires its password (it is in the URL).
  if (u.password) options.password = decodeURIComponent(u.password);
  if (u.username) options.username = decodeURIComponent(u.username);
  return options;
}

function emit(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }

const lines = [];
const waiters = [];
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => { const w = waiters.shift(); if (w) w(line); else lines.push(line); });
rl.on('close', () => { while (waiters.length) waiters.shift()(null); lines.push(null); });
function nextLine() {
  if (lines.length) return Promise.resolve(lines.shift());
  return new Promise((resolve) => waiters.push(resolve));
}
async function expect(word) {
  const line = await nextLine();
  if (line === null || line.trim() !== word) process.exit(3);
}

function batches(n, size) {
  const out = [];
  for (let start = 0; start < n; start += size) {
    const chunk = [];
    for (let i = start; i < Math.min(n, start + size); i++) chunk.push(i);
    out.push(chunk);
  }
  return out;
}

async function runWorker(args) {
  rl.close();
  const redis = new IORedis(args.redis, { maxRetriesPerRequest: null });
  const worker = new Worker(QUEUE, async (job) => {
    if (job.name === 'lat') {
      const started = process.hrtime.bigint();
      await redis.rpush(LATENCY, started.toString());
    } else {
      await redis.incr(COUNTER);
    }
  }, { connection: connectionOptions(args.redis), concurrency: args.concurrency });
  worker.on('error', (err) => console.error('worker error', err));
  let closing = false;
  const stop = async () => {
    if (closing) return;
    closing = true;
    await worker.close();
    await redis.quit();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

async function runProducer(args) {
  const queue = new Queue(QUEUE, { connection: connectionOptions(args.redis) });
  await queue.waitUntilReady();
  const add = (kind, i) => queue.add(kind, { i });
  const addBulk = (kind, items) => queue.addBulk(items.map((i) => ({ name: kind, data: { i } })));
  try {
    const timed = async (bulk) => {
      // enqueue N jobs (one call each, or --batch per call); stop early when --budget-s is up
      const stopAt = args.budgetS ? Date.now() + args.budgetS * 1000 : Infinity;
      const started = process.hrtime.bigint();
      let done = 0;
      if (bulk) {
        for (const chunk of batches(args.jobs, args.batch)) {
          await addBulk('noop', chunk);
          done += chunk.length;
          if (Date.now() > stopAt) break;
        }
      } else {
        for (let i = 0; i < args.jobs; i++) {
          await add('noop', i);
          done++;
          if (Date.now() > stopAt) break;
        }
      }
      return { jobs: done, seconds: Number(process.hrtime.bigint() - started) / 1e9, budget_hit: done < args.jobs };
    };
    if (args.mode === 'prefill') {
      emit(await timed(true));
    } else if (args.mode === 'enqueue') {
      const bulk = args.kind === 'bulk';
      if (bulk) await addBulk('noop', [...Array(Math.min(args.batch, args.warmup)).keys()]);
      else for (let i = 0; i < args.warmup; i++) await add('noop', i);
      process.stdout.write('READY\n');
      await expect('GO');
      emit(await timed(bulk));
      await expect('BYE');
    } else if (args.mode === 'latency') {
      const waiter = new IORedis(args.redis, { maxRetriesPerRequest: null });
      await waiter.del(LATENCY);
      for (let i = 0; i < args.warmup; i++) {
        await add('lat', i);
        const got = await waiter.blpop(LATENCY, i === 0 ? args.startTimeout : args.timeout);
        if (got === null) { emit({ error: `warm-up job ${i} did not start in time` }); return; }
      }
      process.stdout.write('READY\n');
      await expect('GO');
      const out = [];
      let lost = 0;
      const stopAt = args.budgetS ? Date.now() + args.budgetS * 1000 : Infinity;
      for (let i = 0; i < args.jobs; i++) {
        if (Date.now() > stopAt) break;
        await new Promise((resolve) => setTimeout(resolve, args.gapMs));
        const t0 = process.hrtime.bigint();
        await add('lat', i);
        const got = await waiter.blpop(LATENCY, args.timeout);
        if (got === null) { lost++; continue; }
        out.push(Number(BigInt(got[1]) - t0));
      }
      emit({ latencies_ns: out, lost, clock: 'process.hrtime.bigint' });
      await expect('BYE');
      await waiter.quit();
    } else {
      throw new Error(`unknown mode ${args.mode}`);
    }
  } finally {
    await queue.close();
    rl.close();
  }
}

const args = parseArgs(process.argv.slice(2));
if (!args.redis) { console.error('--redis or BENCH_REDIS_URL is needed'); process.exit(2); }
(args.mode === 'worker' ? runWorker(args) : runProducer(args)).catch((err) => {
  console.error(err);
  process.exit(1);
}).then(() => { if (args.mode !== 'worker') process.exit(0); });
