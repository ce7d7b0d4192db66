// Run a wdctl translator.onnx from Node.js: the whole search is inside the graph, so this file
// only packs token ids into tensors and reads token ids back.
//
//   echo '{"model": "PACKAGE/translator.onnx", "sources": [[12, 5, 0]], "beams": 4, "max_length": 40, "pad_token_id": 58100}' \
//     | node examples/node/translate.mjs
//
// Input (stdin, JSON): sources = source token id lists (each ending with EOS, as the tokenizer
// writes them), beams, max_length (counting the decoder start token; the search runs to
// max_length - 1), pad_token_id, optional length_penalty and threads. Output (stdout, JSON): {"sequences": [[...], ...]},
// the op's raw rows (decoder start token first, right-padded with <pad>). Tokenize and detokenize
// with the package's SentencePiece files (e.g. the `sentencepiece` npm package).
import * as ort from "onnxruntime-node";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const job = JSON.parse(Buffer.concat(chunks).toString("utf8"));

const session = await ort.InferenceSession.create(job.model, {
  intraOpNumThreads: job.threads ?? 1,
  graphOptimizationLevel: "all",
});
const pad = job.pad_token_id;  // the package's <pad> id (its config.json, or the file's wdctl.pad_token_id)
const batch = job.sources.length;
const width = Math.max(...job.sources.map((s) => s.length));
const ids = new Int32Array(batch * width).fill(pad);
const mask = new Int32Array(batch * width);
job.sources.forEach((s, r) => s.forEach((t, c) => { ids[r * width + c] = t; mask[r * width + c] = 1; }));
const scalar = (type, value) => new ort.Tensor(type, type === "int32" ? Int32Array.from([value]) : Float32Array.from([value]), [1]);
const feeds = {
  input_ids: new ort.Tensor("int32", ids, [batch, width]),
  attention_mask: new ort.Tensor("int32", mask, [batch, width]),
  max_length: scalar("int32", job.max_length - 1),
  min_length: scalar("int32", 0),
  num_beams: scalar("int32", job.beams),
  length_penalty: scalar("float32", job.length_penalty ?? 1.0),
  repetition_penalty: scalar("float32", 1.0),
};
const { sequences } = await session.run(feeds, ["sequences"]);
const [, , length] = sequences.dims;
const rows = [];
for (let r = 0; r < batch; r++) rows.push(Array.from(sequences.data.slice(r * length, (r + 1) * length)));
process.stdout.write(JSON.stringify({ sequences: rows }) + "\n");
