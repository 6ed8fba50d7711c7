// Runs a TensorFlow.js graph model in Node for dualtrain's check of export.formats=[tfjs].
//
//   node runner.js NODE_ENV_DIR MODEL_DIR
//
// NODE_ENV_DIR holds the node_modules that `npm ci` installed from the package-lock.json beside
// this file; MODEL_DIR holds model.json and its weight shards. The model is loaded with
// tf.loadGraphModel (from the files, through an IOHandler: no file:// loader without tfjs-node)
// on the CPU backend. Then one JSON object per line, each way:
//
//   out: {"ready": true, "tfjs": "4.22.0", "backend": "cpu", "inputs": [...], "outputs": [...]}
//   in:  {"inputs": {KEY: {"dtype": "float32", "shape": [n, ...], "data": BASE64}}, "outputs": [KEY, ...],
//         "repeat": 0}
//   out: {"outputs": {KEY: {"dtype": ..., "shape": [...], "data": BASE64}}, "ms": [...]}
//        or {"error": "..."}
//
// KEY is a key of model.json's signature; data are the tensor's bytes, little-endian, row-major.
// With "repeat": N the call is timed N more times in here (after it ran once), "ms" in
// milliseconds, inputs and outputs excluded. Stdout carries only these lines: tfjs's own notes go
// to stderr. The process ends when stdin closes.
"use strict";

const fs = require("fs");
const path = require("path");
const readline = require("readline");
const { createRequire } = require("module");

console.log = console.error; // stdout is the protocol
console.info = console.error;

const [envDir, modelDir] = process.argv.slice(2);
const tf = createRequire(path.join(envDir, "package.json"))("@tensorflow/tfjs");

const ARRAYS = { float32: Float32Array, int32: Int32Array, bool: Uint8Array };

function send(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

function weightsLoader(dir) {
  return async (manifest) => {
    const specs = [];
    const buffers = [];
    for (const group of manifest) {
      specs.push(...group.weights);
      for (const shard of group.paths) {
        buffers.push(fs.readFileSync(path.join(dir, shard)));
      }
    }
    const all = Buffer.concat(buffers);
    return [specs, all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength)];
  };
}

async function load(dir) {
  const json = JSON.parse(fs.readFileSync(path.join(dir, "model.json"), "utf8"));
  const artifacts = await tf.io.getModelArtifactsForJSON(json, weightsLoader(dir));
  return tf.loadGraphModel({ load: async () => artifacts });
}

function toTensor(entry) {
  const ArrayType = ARRAYS[entry.dtype];
  if (ArrayType === undefined) {
    throw new Error(`tfjs takes float32, int32 or bool inputs, not ${entry.dtype}`);
  }
  const bytes = Buffer.from(entry.data, "base64");
  const copy = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  return tf.tensor(new ArrayType(copy), entry.shape, entry.dtype);
}

async function fromTensor(tensor) {
  const values = await tensor.data();
  const bytes = Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  return { dtype: tensor.dtype, shape: tensor.shape, data: bytes.toString("base64") };
}

function info(tensors) {
  return tensors.map((t) => ({ name: t.name, shape: t.shape ?? null, dtype: t.dtype }));
}

async function main() {
  await tf.setBackend("cpu");
  await tf.ready();
  const model = await load(modelDir);
  // execute() runs graphs without control flow; a model with it (a recurrent layer's while
  // loop) needs executeAsync, which execute() says by throwing: switch once, then keep it.
  let useAsync = false;
  const run = async (inputs, keys) => {
    if (!useAsync) {
      try {
        return model.execute(inputs, keys);
      } catch (err) {
        if (!String(err.message).includes("executeAsync")) throw err;
        useAsync = true;
      }
    }
    return model.executeAsync(inputs, keys);
  };
  send({
    ready: true,
    tfjs: tf.version.tfjs,
    backend: tf.getBackend(),
    inputs: info(model.inputs),
    outputs: info(model.outputs),
  });
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let inputs = {};
    try {
      const request = JSON.parse(line);
      for (const [key, entry] of Object.entries(request.inputs)) {
        inputs[key] = toTensor(entry);
      }
      const keys = request.outputs;
      let got = await run(inputs, keys);
      got = Array.isArray(got) ? got : [got];
      const outputs = {};
      for (let i = 0; i < keys.length; i++) {
        outputs[keys[i]] = await fromTensor(got[i]);
      }
      tf.dispose(got);
      const ms = [];
      for (let i = 0; i < (request.repeat || 0); i++) {
        const started = process.hrtime.bigint();
        const again = await run(inputs, keys);
        const all = Array.isArray(again) ? again : [again];
        await Promise.all(all.map((t) => t.data()));
        ms.push(Number(process.hrtime.bigint() - started) / 1e6);
        tf.dispose(all);
      }
      send({ outputs, ms });
    } catch (err) {
      send({ error: String(err && err.message ? err.message : err).split("\n")[0] });
    } finally {
      tf.dispose(Object.values(inputs));
      inputs = {};
    }
  }
}

main().catch((err) => {
  send({ error: String(err && err.message ? err.message : err).split("\n")[0] });
  process.exit(1);
});
