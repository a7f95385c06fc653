// The function's side of a local JavaScript connector: load the handler, call it the way
// AWS Lambda's Node.js runtime does, and answer with JSON.
//
// `node.py` runs this as `node [--max-old-space-size=N] node_worker.mjs SPEC_JSON` with the
// protocol on fd 3 (requests in) and fd 4 (answers out), and fd 1 pointing at fd 2: what the
// function prints, by console.log or any other way, is logged by the parent and never lands
// inside a frame. The frames are those of `_worker.py`: a 4-byte big-endian length, then a
// request's JSON from the parent, or one kind byte (A answer, S a host-shaped answer: a
// {shape, status} line then the body, D the handler's name and shape for a describe
// request, I import failed, N not found, P a part of a streamed answer, E its end) and its
// payload from this worker. It serves requests until fd 3 closes. Handler shapes
// (netlify, web, gcf, azure): node_shapes.mjs.
//
// A streamed answer (design §13: an async iterator, a generator or a ReadableStream; see
// `streamParts`) is a P frame per part, then an empty E frame; a host-shaped one opens with
// an S frame whose header says `"stream": true` and whose body is empty. Frames are
// written synchronously as the handler yields: while the parent is not reading, the pipe
// is full and the handler waits, so a stream of any length keeps this worker's memory flat.
//
// Before the frame that ends each reply (the only one, or E) the worker waits until what
// the function wrote to process.stdout and process.stderr has reached the pipe (on Linux,
// node writes pipes asynchronously), then writes END_OF_CALL and the call's number as a
// line of its own to stderr: once the parent's reader reaches it, it has read all the call
// printed (`_worker.py` does the same).
//
// Between two calls the worker blocks reading fd 3, so timers and sockets the function
// left behind wait for the next call, as on a frozen Lambda instance.

import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { types } from 'node:util';

import {
  INVALID_ANSWER,
  Shaped,
  WrongAnswer,
  callHost,
  exportedHandler,
  isNetlifyAnswer,
  isStreamed,
  netlifyAnswer,
  netlifyEvent,
  requestEvent,
  shapeByExport,
} from './node_shapes.mjs';

const REQUESTS = 3;
const ANSWERS = 4;
const ANSWER = 'A';
const COLUMNS = 'C'; // an answer with large tables as columns, as in columns.py
const COLUMNAR_MIN_ROWS = 64; // as in columns.py
const SHAPED = 'S';
const DESCRIBED = 'D';
const DESCRIBE = 'describe'; // a request {"connector-runtime": "describe"}, as in _worker.py
const IMPORT_FAILED = 'I';
const NOT_FOUND = 'N';
const PART = 'P';
const STREAM_END = 'E';
// Of a streamed body answered with a status other than 2xx: enough to quote in an alert.
const FAILED_BODY_BYTES = 4096;
const MAX_LINE_BYTES = 256 * 1024 * 1024; // of a streamed answer, as in invokers/__init__.py
const JSON_WHITESPACE = new Set([0x20, 0x09, 0x0a, 0x0d]);
const END_OF_CALL = '\0connector-runtime:end-of-call:'; // as in _worker.py
const WORKER_LOCATIONS = [`${import.meta.url}:`, `${fileURLToPath(import.meta.url)}:`];
const INTERNAL_FRAME = /^\s+at (.*\()?node:/;
// JSON.stringify cannot write a BigInt, and writes NaN and ±Infinity as null (losing a
// cursor without a word); they are written as this marker, then unquoted: the BigInt's
// digits, or NaN, Infinity, -Infinity as Python writes them, for the runtime to judge.
const NUMBER_MARK = `number:${randomUUID()}:`;
const NUMBER_MARKED = new RegExp(`"${NUMBER_MARK}(-?\\d+|NaN|-?Infinity)"`, 'g');

class HandlerNotFound extends Error {}

class HandlerImportError extends Error {
  constructor(shape) {
    super(shape.errorMessage);
    this.shape = shape;
  }
}

// -- the pipe to the parent ---------------------------------------------------------------

function readExactly(size) {
  const buffer = Buffer.alloc(size);
  let filled = 0;
  while (filled < size) {
    const count = fs.readSync(REQUESTS, buffer, filled, size - filled, null);
    if (count === 0) return null;
    filled += count;
  }
  return buffer;
}

/** The next request, or null once the parent has closed the pipe. */
function receive() {
  const header = readExactly(4);
  const body = header && readExactly(header.readUInt32BE(0));
  return body && JSON.parse(body.toString('utf8'));
}

let replies = 0;

/** Once the output written so far is in the pipe, mark the call's end, then `then()`. */
function endOutput(then) {
  replies += 1;
  const mark = `${END_OF_CALL}${replies}\n`;
  // A stream's write callbacks run in order: after this one, all it was given is written.
  const afterStdout = () => writeThen(process.stderr, mark, then);
  writeThen(process.stdout, '', afterStdout);
}

/** `stream.write(text)`, then `then()`, even if the function broke the stream. */
function writeThen(stream, text, then) {
  try {
    stream.write(text, () => then());
  } catch {
    then();
  }
}

/** Write one frame; blocks while the pipe is full. */
function send(kind, payload) {
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(payload, 'utf8');
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length + 1, 0);
  head.write(kind, 4, 'latin1');
  for (const bytes of [head, body]) {
    for (let written = 0; written < bytes.length; ) {
      written += fs.writeSync(ANSWERS, bytes, written);
    }
  }
}

// -- loading ------------------------------------------------------------------------------

/**
 * The handler of `spec.path` (`spec.handler`, else `handler`, else `lambda_handler`, else
 * the default export) as `{name, handler, shape}`; `shape` null when told by the answer.
 */
async function loadHandler(spec) {
  const source = spec.source ?? spec.path; // a TypeScript function runs from its build
  if (!fs.statSync(spec.path, { throwIfNoEntry: false })?.isFile()) {
    throw new HandlerNotFound(`function file ${source} does not exist`);
  }
  let namespace;
  try {
    // import() reads ESM (.mjs, or .js under "type": "module") and CommonJS (.cjs, .js) alike.
    namespace = await import(pathToFileURL(spec.path).href);
  } catch (error) {
    throw new HandlerImportError(importErrorShape(error, path.parse(source).name));
  }
  const found = exportedHandler(namespace, spec.handler);
  if (!found.handler) {
    throw new HandlerNotFound(`${source} exports no function ${found.wanted} to use as the handler`);
  }
  return { ...found, shape: spec.shape ?? shapeByExport(found) };
}

/** Name import failures as Lambda does, so alerts read the same in both places. */
function importErrorShape(error, module) {
  if (error instanceof SyntaxError) {
    const message = `Syntax error in module '${module}': ${error.message}`;
    return errorShape(error, 'Runtime.UserCodeSyntaxError', message);
  }
  if (['ERR_MODULE_NOT_FOUND', 'MODULE_NOT_FOUND'].includes(error?.code)) {
    const message = `Unable to import module '${module}': ${error.message}`;
    return errorShape(error, 'Runtime.ImportModuleError', message);
  }
  return errorShape(error);
}

// -- calling ------------------------------------------------------------------------------

/**
 * Lambda's error answer; `stackTrace` is the stack's lines without this worker's frames.
 * An error whose message cannot be read (a throwing getter or toString, an object without
 * a prototype) is still described: `<type> (its message could not be read: <that error>)`.
 */
function errorShape(error, errorType, errorMessage) {
  const isError = types.isNativeError(error) || error instanceof Error;
  // A thrown non-Error is named by its typeof, as Lambda names it.
  const type = errorType ?? (isError ? readable(() => String(error.name)) ?? 'Error' : typeof error);
  let stack = [];
  try {
    stack = isError && typeof error.stack === 'string' ? error.stack.split('\n') : [];
  } catch {} // a throwing `stack` getter: no stack, the message still says what it could
  let message = errorMessage;
  if (message === undefined) {
    try {
      message = isError ? String(error.message) : String(error);
    } catch (unreadable) {
      message = `${type} (its message could not be read: ${described(unreadable)})`;
    }
  }
  return {
    errorMessage: message,
    errorType: type,
    stackTrace: stack.filter((line) => !INTERNAL_FRAME.test(line) && !isWorkerFrame(line)),
  };
}

/** `fn()`, or undefined if it throws. */
function readable(fn) {
  try {
    return fn();
  } catch {
    return undefined;
  }
}

/** `Type: message` of an error met while describing another one, never throwing. */
function described(error) {
  if (!(types.isNativeError(error) || error instanceof Error)) {
    return readable(() => String(error)) ?? typeof error;
  }
  const name = readable(() => String(error.name)) ?? typeof error;
  const message = readable(() => String(error.message));
  return message ? `${name}: ${message}` : name;
}

function isWorkerFrame(line) {
  return WORKER_LOCATIONS.some((location) => line.includes(location));
}

/** The answer as JSON; a BigInt as its exact digits; what won't encode is a MarshalError. */
function marshal(answer) {
  try {
    return toJson(answer);
  } catch (error) {
    return marshalError(error);
  }
}

/** The answer as JSON, a BigInt as its exact digits; throws what won't encode. */
function toJson(answer) {
  const text = JSON.stringify(answer ?? null, (_, value) =>
    typeof value === 'bigint' || (typeof value === 'number' && !Number.isFinite(value))
      ? `${NUMBER_MARK}${value}`
      : value,
  );
  return (text ?? 'null').replace(NUMBER_MARKED, '$1');
}

/**
 * The answer with its large tables as one JSON array per column (the frame columns.py
 * reads), or null: only tables of at least COLUMNAR_MIN_ROWS plain objects with the same
 * keys, none holding a value JSON.stringify would leave out of a row (undefined, a
 * function, a symbol), so the rows read back exactly as their JSON would.
 */
function columnarPayload(answer) {
  if (!isPlainObject(answer) || 'errorMessage' in answer || !('state' in answer)) return null;
  if (!isPlainObject(answer.insert)) return null;
  // without a prototype: a table or column called __proto__ is then a key like any other
  const columns = Object.create(null);
  const rest = Object.create(null);
  for (const [table, rows] of Object.entries(answer.insert)) {
    const found = columnsOf(rows);
    if (found) columns[table] = found;
    rest[table] = found ? [] : rows;
  }
  if (Object.keys(columns).length === 0) return null;
  try {
    const head = Buffer.from(toJson({ ...answer, insert: rest }), 'utf8');
    const length = Buffer.alloc(4);
    length.writeUInt32BE(head.length, 0);
    return Buffer.concat([length, head, Buffer.from(toJson(columns), 'utf8')]);
  } catch {
    return null; // marshal() then says why, as Lambda does
  }
}

function columnsOf(rows) {
  if (!Array.isArray(rows) || rows.length < COLUMNAR_MIN_ROWS || !rows.every(isPlainObject)) return null;
  const names = new Set();
  let count = 0;
  for (const row of rows) {
    const keys = Object.keys(row);
    count += keys.length;
    for (const key of keys) names.add(key);
  }
  if (names.size === 0 || count !== names.size * rows.length) return null;
  const columns = Object.create(null);
  for (const name of names) {
    const values = rows.map((row) => row[name]);
    if (values.some((value) => OMITTED.has(typeof value))) return null;
    columns[name] = values;
  }
  return columns;
}

const OMITTED = new Set(['undefined', 'function', 'symbol']); // left out of an object by JSON

function isPlainObject(value) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const prototype = Object.getPrototypeOf(value);
  return (prototype === Object.prototype || prototype === null) && typeof value.toJSON !== 'function';
}

function marshalError(error) {
  const message = `Unable to marshal response: ${readable(() => String(error.message))}`;
  return JSON.stringify({ ...errorShape(error, 'Runtime.MarshalError', message), stackTrace: [] });
}

/** The `context` a handler receives, with the fields of Lambda's Node.js runtime. */
function lambdaContext(spec, logStreamName, done) {
  const deadline = performance.now() + spec.timeout * 1000;
  return {
    callbackWaitsForEmptyEventLoop: true,
    awsRequestId: randomUUID(),
    functionName: spec.function_name,
    functionVersion: '$LATEST',
    invokedFunctionArn: `arn:aws:lambda:local:000000000000:function:${spec.function_name}`,
    memoryLimitInMB: spec.memory_mb ? String(spec.memory_mb) : undefined,
    logGroupName: `/aws/lambda/${spec.function_name}`,
    logStreamName,
    identity: undefined,
    clientContext: undefined,
    getRemainingTimeInMillis: () => Math.max(0, Math.floor(deadline - performance.now())),
    // Lambda's legacy ways to answer, still used by old functions.
    done,
    succeed: (result) => done(null, result),
    fail: (error) => done(error ?? new Error('context.fail() called')),
  };
}

/** The reply for a host's shaped answer: a {shape, status} line, then the body; or its stream. */
function shapedReply(shaped) {
  if (shaped.stream !== undefined) return { stream: { shaped, items: shaped.stream } };
  return { kind: SHAPED, body: Buffer.concat([shapedHeader(shaped), shaped.body]) };
}

function shapedHeader({ shape, status }, stream = false) {
  return Buffer.from(`${JSON.stringify({ shape, status, ...(stream && { stream }) })}\n`);
}

/** An error answer; a `WrongAnswer` (not of the handler's shape) without a stack. */
function failure(error) {
  const shape = errorShape(error);
  return JSON.stringify(error instanceof WrongAnswer ? { ...shape, errorType: INVALID_ANSWER, stackTrace: [] } : shape);
}

/**
 * Call the handler once, in its shape's way; `settled({body, kind, waitForEmptyLoop})` gets
 * its answer. Returns what to answer if the event loop empties first (or undefined).
 */
function call(loaded, request, spec, logStreamName, settled) {
  const { handler, shape } = loaded;
  if (['web', 'gcf', 'azure'].includes(shape)) {
    const reply = (shaped) => settled(shapedReply(shaped));
    const idle = callHost(shape, handler, request, spec.function_name, reply, (error) => settled({ body: failure(error) }));
    return idle && (() => {
      const shaped = idle();
      return shaped && shapedReply(shaped);
    });
  }
  let event = request;
  if (shape === 'netlify') event = netlifyEvent(request, spec.function_name);
  else if (shape === null) event = requestEvent(request, spec.function_name);
  callLikeLambda(handler, event, spec, logStreamName, (answer) => {
    if (answer.error === undefined && (shape === 'netlify' || (shape === null && isNetlifyAnswer(answer.result)))) {
      try {
        return settled({ ...shapedReply(netlifyAnswer(answer.result)), waitForEmptyLoop: answer.waitForEmptyLoop });
      } catch (error) {
        return settled({ body: failure(error), waitForEmptyLoop: answer.waitForEmptyLoop });
      }
    }
    if (answer.error === undefined && isStreamed(answer.result)) {
      return settled({ stream: { items: answer.result }, waitForEmptyLoop: answer.waitForEmptyLoop });
    }
    const columnar = answer.error === undefined ? columnarPayload(answer.result) : null;
    if (columnar) return settled({ kind: COLUMNS, body: columnar, waitForEmptyLoop: answer.waitForEmptyLoop });
    const body = answer.error === undefined ? marshal(answer.result) : failure(answer.error);
    settled({ body, waitForEmptyLoop: answer.waitForEmptyLoop });
  });
  return undefined;
}

/**
 * Call the handler as Lambda's Node.js runtime does; `settled({result | error, waitForEmptyLoop})`.
 *
 * Its answer is the first of: the promise it returns, the callback (passed as the third
 * argument; or `context.done`, `succeed`, `fail`), or, when it declares fewer than three
 * parameters, the value it returns unless that is `undefined` (Lambda ignores it).
 * An answer given through the callback waits for the event loop to empty while
 * `context.callbackWaitsForEmptyEventLoop` is true, as on Lambda.
 */
function callLikeLambda(handler, request, spec, logStreamName, settled) {
  let answered = false;
  const finish = (outcome, viaCallback) => {
    if (answered) return;
    answered = true;
    settled({ ...outcome, waitForEmptyLoop: viaCallback && context.callbackWaitsForEmptyEventLoop });
  };
  const answer = (result, viaCallback) => finish({ result }, viaCallback);
  const fail = (error, viaCallback) => finish({ error }, viaCallback);
  const callback = (error, result) => (error == null ? answer(result, true) : fail(error, true));
  const context = lambdaContext(spec, logStreamName, callback);
  let returned;
  try {
    returned = handler(request, context, callback);
  } catch (error) {
    fail(error, false);
    return;
  }
  if (typeof returned?.then === 'function') {
    returned.then(
      (result) => answer(result, false),
      (error) => fail(error, false),
    );
  } else if (handler.length < 3 && returned !== undefined) {
    answer(returned, false);
  }
}

const NO_ANSWER = JSON.stringify({
  errorMessage:
    'the handler never answered: it returned nothing, its promise did not settle or its ' +
    'callback was not called, and nothing it started was still running',
  errorType: 'Runtime.NoAnswer',
  stackTrace: [],
});

/** Serve one request, then (on the next turn of the event loop) the next. */
function serve(loaded, spec, logStreamName) {
  const request = receive(); // blocks: the instance is frozen between calls
  if (request === null) process.exit(0);
  if (request?.['connector-runtime'] === DESCRIBE) {
    const described = JSON.stringify({ handler: loaded.name, shape: loaded.shape });
    endOutput(() => send(DESCRIBED, described));
    setImmediate(serve, loaded, spec, logStreamName);
    return;
  }
  let answer = null;
  let idle;
  const reply = () => {
    process.removeListener('beforeExit', reply);
    answer ??= idleAnswer(idle);
    const next = () => setImmediate(serve, loaded, spec, logStreamName);
    if (answer?.stream) {
      sendStream(answer.stream, next);
      return;
    }
    endOutput(() => {
      send(answer?.kind ?? ANSWER, answer?.body ?? NO_ANSWER);
      next();
    });
  };
  // The event loop empties when nothing the call started is pending any more.
  process.once('beforeExit', reply);
  idle = call(loaded, request, spec, logStreamName, (settled) => {
    answer = settled;
    if (!settled.waitForEmptyLoop) reply();
  });
}

// -- streamed answers ---------------------------------------------------------------------

/**
 * Send a streamed answer as the handler yields it: a host's S header, a P frame per part,
 * then (once the call's output is written) E; then `then()`. A host's answer with a status
 * other than 2xx is not streamed: its first parts are the body of an S answer, to quote.
 */
async function sendStream({ shaped, items }, then) {
  const finish = (kind, payload) => endOutput(() => {
    send(kind, payload);
    then();
  });
  const parts = streamParts(items);
  if (shaped && !(shaped.status >= 200 && shaped.status < 300)) {
    const failed = new Shaped(shaped.shape, shaped.status, await head(parts, FAILED_BODY_BYTES));
    const { kind, body } = shapedReply(failed);
    return finish(kind, body);
  }
  if (shaped) send(SHAPED, shapedHeader(shaped, true));
  for await (const part of parts) send(PART, part);
  return finish(STREAM_END, '');
}

/** The first parts, a line each, until `limit` bytes are taken; then the end. */
async function head(parts, limit) {
  const taken = [];
  let size = 0;
  for await (const part of parts) {
    taken.push(part, Buffer.from('\n'));
    size += part.length + 1;
    if (size >= limit) break;
  }
  return Buffer.concat(taken);
}

/**
 * The parts of a streamed answer as Buffers of JSON, pulled from `items` one at a time. An
 * item that is a string or bytes is NDJSON text, a part a line, cut anywhere (a line may
 * span items); any other item is one part. A throw, an item that won't encode, or the
 * event loop emptying while the handler still owes an item ends the parts with its error
 * shape, as a throw answers.
 */
async function* streamParts(items) {
  const lines = new NdjsonLines();
  const iterator = iteratorOf(items);
  try {
    for (let item = await nextItem(iterator); !item.done; item = await nextItem(iterator)) {
      const text = textOf(item.value);
      if (text) {
        yield* lines.push(text);
        continue;
      }
      yield* lines.end();
      let part;
      try {
        part = toJson(item.value);
      } catch (error) {
        yield Buffer.from(marshalError(error));
        return;
      }
      yield Buffer.from(part);
    }
    yield* lines.end();
  } catch (error) {
    yield* lines.end();
    yield Buffer.from(failure(error));
  } finally {
    closeQuietly(iterator);
  }
}

/** The iterator of a ReadableStream, an async iterable or a (sync) iterator. */
function iteratorOf(items) {
  if (typeof items[Symbol.asyncIterator] === 'function') return items[Symbol.asyncIterator]();
  if (typeof items.getReader === 'function') {
    const reader = items.getReader();
    return { next: () => reader.read(), return: () => reader.cancel() };
  }
  return items;
}

const NO_STACK = { name: 'Runtime.NoAnswer', stack: undefined };
const STALLED = 'the streamed answer stopped before its end: the handler awaited something ' +
  'that could never settle, and nothing it started was still running';

/** The iterator's next `{value, done}`, its value awaited; throws if the loop empties first. */
function nextItem(iterator) {
  return new Promise((resolve, reject) => {
    const stalled = () => reject(Object.assign(new Error(STALLED), NO_STACK));
    process.once('beforeExit', stalled);
    const settle = (outcome, value) => {
      process.removeListener('beforeExit', stalled);
      outcome(value);
    };
    Promise.resolve()
      .then(() => iterator.next())
      .then(async (item) => (item.done ? item : { done: false, value: await item.value }))
      .then((item) => settle(resolve, item), (error) => settle(reject, error));
  });
}

/** Ask the iterator to stop (its `finally` blocks run), without waiting or throwing. */
function closeQuietly(iterator) {
  try {
    Promise.resolve(iterator.return?.()).catch(() => {});
  } catch {} // its return() threw: it is done all the same
}

/** A string or bytes as a Buffer (not copied), or null for any other item. */
function textOf(item) {
  if (typeof item === 'string') return Buffer.from(item, 'utf8');
  if (item instanceof ArrayBuffer) return Buffer.from(item);
  if (ArrayBuffer.isView(item)) return Buffer.from(item.buffer, item.byteOffset, item.byteLength);
  return null;
}

/** NDJSON text arriving in chunks: `push(chunk)` and, at its end, `end()` yield its non-blank lines. */
class NdjsonLines {
  pending = [];
  size = 0;
  number = 0;

  *push(chunk) {
    let start = 0;
    for (let newline = chunk.indexOf(10); newline !== -1; newline = chunk.indexOf(10, start)) {
      this.number += 1;
      this.pending.push(chunk.subarray(start, newline));
      yield* this.end();
      start = newline + 1;
    }
    if (start === chunk.length) return;
    this.pending.push(chunk.subarray(start));
    this.size += chunk.length - start;
    if (this.size > MAX_LINE_BYTES) {
      this.pending = []; // refused, not sent
      throw new WrongAnswer(
        `line ${this.number + 1} of the streamed answer is longer than ${MAX_LINE_BYTES / 2 ** 20} MB; ` +
          'send smaller parts (one JSON object per line)',
      );
    }
  }

  *end() {
    const line = trimmed(this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending));
    this.pending = [];
    this.size = 0;
    if (line.length) yield line;
  }
}

function trimmed(line) {
  let start = 0;
  let end = line.length;
  while (start < end && JSON_WHITESPACE.has(line[start])) start += 1;
  while (end > start && JSON_WHITESPACE.has(line[end - 1])) end -= 1;
  return line.subarray(start, end);
}

/** What a handler that never answered leaves to answer with (Azure's `context.res`). */
function idleAnswer(idle) {
  try {
    return idle?.() || null;
  } catch (error) {
    return { body: failure(error) };
  }
}

/** End this worker when the runtime that started it dies, even by `kill -9`: no orphan
 * keeps calling an API past the timeout only the parent enforces. (Between calls the
 * worker waits in a blocking read, which ends by itself when the parent's pipe closes.) */
function exitWithParent() {
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) process.exit(70);
  }, 500).unref();
}

async function main(argv) {
  const spec = JSON.parse(argv[2]);
  exitWithParent();
  let loaded;
  try {
    loaded = await loadHandler(spec);
  } catch (error) {
    if (error instanceof HandlerNotFound) refuse(NOT_FOUND, error.message);
    else if (error instanceof HandlerImportError) refuse(IMPORT_FAILED, JSON.stringify(error.shape));
    else throw error;
    return;
  }
  const day = new Date().toISOString().slice(0, 10).replaceAll('-', '/');
  serve(loaded, spec, `${day}/[$LATEST]${randomUUID().replaceAll('-', '')}`);
}

/** Answer the first request with why there is nothing to call, then end. */
function refuse(kind, payload) {
  if (receive() === null) process.exit(0);
  endOutput(() => {
    send(kind, payload);
    process.exit(0);
  });
}

await main(process.argv);
