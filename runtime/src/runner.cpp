// edgeseq-runner: greedy generation with an edgeseq ExecuTorch artifact, in C++, no Python.
//
//   edgeseq-runner REQUEST.json|- [--runs N] [--warmup K] [--threads T] [--verbose]
//   edgeseq-runner --serve [--threads T] [--verbose]    one JSON request per stdin line
//
// The request (JSON, written by toolchain/native.py or by hand) names the program and weights
// files, the methods, the encode inputs and the decoding rules; the runner loads the program
// once, encodes once and decodes one token per step on the in-program KV cache, choosing
// each token by argmax over the logits in the program's own output buffer, or, when the decode
// program chooses it (a last input token_bias float[1, V], a last output next_token int64[1]),
// by reading that token and leaving the logits alone unless asked for. It prints one
// JSON object on stdout. The loop mirrors toolchain/generate.py greedy() step for step:
// forced decoder prompt (a null entry = the best of language_ids), suppress_tokens,
// begin_suppress_tokens, min_new_tokens (EOS suppressed), forced_eos_token_id at the step
// that ends generation (max_new_tokens or the last cache slot; it wins over min_new_tokens, as
// in transformers), and force_length (EOS suppressed for the whole run, none forced: probes).
//
// Exit codes: 0 ok; 2 bad input (request, files, a program the request does not fit);
// 3 the runtime failed while executing; 70 the runtime aborted (a signal). Every failure is
// one line on stderr. ExecuTorch's own log lines are kept off stderr unless --verbose.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "json.h"
#include "sha256.h"

// The wheel ships the thread pool library but not its header; these are the two entry points
// the runner needs (declared as in extension/threadpool/threadpool.h, ExecuTorch 1.5).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace {

using executorch::aten::ScalarType;
using executorch::extension::TensorPtr;
using executorch::extension::from_blob;
using executorch::extension::module::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::MethodMeta;
using Clock = std::chrono::steady_clock;

constexpr int kBadInput = 2, kRuntimeFailed = 3, kAborted = 70;

struct Failure {
  int code;
  std::string message;
};

[[noreturn]] void fail(int code, const std::string& message) { throw Failure{code, message}; }

// ---- ExecuTorch logging: silent unless --verbose; the last error is kept for our one line.
bool g_verbose = false;
std::string g_last_error;

void emit_log(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line,
              const char* message, size_t length) {
  std::string text(message, length);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  if (level == kError || level == kFatal) g_last_error = text;
  if (g_verbose) {
    std::fprintf(stderr, "[executorch %c %s:%zu] %s\n", static_cast<char>(level), filename ? filename : "?", line,
                 text.c_str());
  }
}

std::string why(Error e) {
  std::string s = executorch::runtime::to_string(e);
  if (!g_last_error.empty()) s += " (" + g_last_error + ")";
  g_last_error.clear();
  return s;
}

// A crash inside the runtime (a malformed program it did not validate) still ends as one line.
void on_signal(int sig) {
  char buf[160];
  int n = std::snprintf(buf, sizeof buf, "error: the ExecuTorch runtime aborted (signal %d: %s)\n", sig,
                        sig == SIGSEGV ? "segmentation fault" : sig == SIGABRT ? "abort" : "fatal signal");
  if (n > 0) (void)!write(STDERR_FILENO, buf, static_cast<size_t>(n));
  _exit(kAborted);
}

// ---- The request.
struct Request {
  std::string program, data, encode_method = "encode", decode_method = "decode";
  std::vector<std::string> encode_inputs;                  // encode input names, in order
  std::vector<std::pair<int64_t, std::string>> lengths;    // shorter encode programs (length, method)
  std::vector<std::pair<std::string, std::string>> sha256; // file -> expected digest
  std::vector<int64_t> ids;
  bool has_ids = false;
  std::string features;  // raw float32 file (log-mel features), instead of ids
  int64_t start = 0, eos = 1, pad = 0;
  std::vector<int64_t> prompt;  // -1 = detect the language (argmax over language_ids)
  std::vector<int64_t> language_ids, suppress, begin_suppress;
  int64_t forced_eos = -1;
  int64_t max_output_len = 0, max_new_tokens = -1, min_new_tokens = 0;
  bool force_length = false;
  int64_t threads = 0;
  std::string logits;  // write each step's raw logits (float32 rows) here
};

const edgeseq::json::Value& need(const edgeseq::json::Value& obj, const std::string& key) {
  const auto* v = obj.get(key);
  if (!v) fail(kBadInput, "request has no \"" + key + "\"");
  return *v;
}

int64_t as_int(const edgeseq::json::Value& v, const std::string& what) {
  if (v.kind != edgeseq::json::Value::Kind::Number || std::floor(v.number) != v.number ||
      std::fabs(v.number) > 9.0e15) {
    fail(kBadInput, "request " + what + " must be an integer");
  }
  return static_cast<int64_t>(v.number);
}

std::string as_str(const edgeseq::json::Value& v, const std::string& what) {
  if (v.kind != edgeseq::json::Value::Kind::String) fail(kBadInput, "request " + what + " must be a string");
  return v.string;
}

std::vector<int64_t> int_list(const edgeseq::json::Value* v, const std::string& what, bool allow_null = false) {
  std::vector<int64_t> out;
  if (!v || v->is_null()) return out;
  if (v->kind != edgeseq::json::Value::Kind::Array) fail(kBadInput, "request " + what + " must be a list");
  for (const auto& x : v->array) out.push_back(allow_null && x.is_null() ? -1 : as_int(x, what + " entries"));
  return out;
}

Request parse_request(const std::string& text) {
  edgeseq::json::Value root;
  try {
    root = edgeseq::json::Parser(text).parse();
  } catch (const std::exception& e) {
    fail(kBadInput, e.what());
  }
  if (root.kind != edgeseq::json::Value::Kind::Object) fail(kBadInput, "request must be a JSON object");
  Request r;
  r.program = as_str(need(root, "program"), "program");
  if (const auto* d = root.get("data"); d && !d->is_null()) r.data = as_str(*d, "data");
  const auto& enc = need(root, "encode");
  if (const auto* m = enc.get("method")) r.encode_method = as_str(*m, "encode.method");
  const auto& names = need(enc, "inputs");
  if (names.kind != edgeseq::json::Value::Kind::Array) fail(kBadInput, "request encode.inputs must be a list");
  for (const auto& n : names.array) r.encode_inputs.push_back(as_str(n, "encode.inputs entries"));
  if (const auto* ls = enc.get("lengths"); ls && ls->kind == edgeseq::json::Value::Kind::Array) {
    for (const auto& e : ls->array) {
      r.lengths.emplace_back(as_int(need(e, "length"), "encode.lengths length"),
                             as_str(need(e, "method"), "encode.lengths method"));
    }
    std::sort(r.lengths.begin(), r.lengths.end());
  }
  if (const auto* dec = root.get("decode"); dec && dec->get("method")) {
    r.decode_method = as_str(*dec->get("method"), "decode.method");
  }
  if (const auto* s = root.get("sha256"); s && s->kind == edgeseq::json::Value::Kind::Object) {
    for (const auto& [file, digest] : s->object) r.sha256.emplace_back(file, as_str(digest, "sha256 entries"));
  }
  if (const auto* ids = root.get("ids"); ids && !ids->is_null()) {
    r.ids = int_list(ids, "ids");
    r.has_ids = true;
  }
  if (const auto* f = root.get("features"); f && !f->is_null()) r.features = as_str(*f, "features");
  if (r.has_ids == !r.features.empty()) fail(kBadInput, "request needs exactly one of \"ids\" and \"features\"");
  const auto& tok = need(root, "tokens");
  r.start = as_int(need(tok, "decoder_start_token_id"), "tokens.decoder_start_token_id");
  r.eos = as_int(need(tok, "eos_token_id"), "tokens.eos_token_id");
  r.pad = as_int(need(tok, "pad_token_id"), "tokens.pad_token_id");
  r.prompt = int_list(tok.get("decoder_prompt"), "tokens.decoder_prompt", true);
  r.language_ids = int_list(tok.get("language_token_ids"), "tokens.language_token_ids");
  r.suppress = int_list(tok.get("suppress_tokens"), "tokens.suppress_tokens");
  r.begin_suppress = int_list(tok.get("begin_suppress_tokens"), "tokens.begin_suppress_tokens");
  if (const auto* f = tok.get("forced_eos_token_id"); f && !f->is_null()) {
    r.forced_eos = as_int(*f, "tokens.forced_eos_token_id");
  }
  r.max_output_len = as_int(need(root, "max_output_len"), "max_output_len");
  if (const auto* m = root.get("max_new_tokens"); m && !m->is_null()) r.max_new_tokens = as_int(*m, "max_new_tokens");
  if (const auto* m = root.get("min_new_tokens"); m && !m->is_null()) r.min_new_tokens = as_int(*m, "min_new_tokens");
  if (const auto* f = root.get("force_length"); f && f->kind == edgeseq::json::Value::Kind::Bool) {
    r.force_length = f->boolean;
  }
  if (const auto* t = root.get("threads"); t && !t->is_null()) r.threads = as_int(*t, "threads");
  if (const auto* l = root.get("logits"); l && !l->is_null()) r.logits = as_str(*l, "logits");
  return r;
}

// ---- The program.
std::vector<int32_t> sizes_of(const executorch::runtime::Span<const int32_t>& s) {
  return std::vector<int32_t>(s.begin(), s.end());
}

std::string shape_str(const std::vector<int32_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t numel(const std::vector<int32_t>& s) {
  int64_t n = 1;
  for (int32_t d : s) n *= d;
  return n;
}

struct EncodeProgram {
  std::string method;
  std::vector<std::vector<int32_t>> shapes;
  std::vector<ScalarType> dtypes;
};

struct Generation {
  std::vector<int64_t> tokens, prompt;
  double encode_s = 0;
  std::vector<double> step_s;
  std::string stopped;
  int64_t encoder_len = 0;
};

class Runner {
 public:
  explicit Runner(Request r) : req_(std::move(r)) {}

  double load() {
    for (const auto& [file, digest] : req_.sha256) {
      std::string got = edgeseq::sha256_file(file);
      if (got.empty()) fail(kBadInput, file + ": cannot read");
      if (got != digest) fail(kBadInput, file + ": sha256 differs from the manifest (file modified or corrupt)");
    }
    for (const std::string& f : {req_.program, req_.data}) {
      if (!f.empty() && access(f.c_str(), R_OK) != 0) fail(kBadInput, f + ": cannot read (" + std::strerror(errno) + ")");
    }
    if (req_.threads > 0) {
      executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(
          static_cast<uint32_t>(req_.threads));
    }
    auto t0 = Clock::now();
    module_ = req_.data.empty() ? std::make_unique<Module>(req_.program, Module::LoadMode::Mmap)
                                : std::make_unique<Module>(req_.program, req_.data, Module::LoadMode::Mmap);
    Error e = module_->load(executorch::runtime::Program::Verification::InternalConsistency);
    if (e != Error::Ok) fail(kBadInput, "cannot load " + req_.program + ": " + why(e));
    auto names = module_->method_names();
    if (!names.ok()) fail(kBadInput, "cannot read the methods of " + req_.program + ": " + why(names.error()));
    auto has = [&](const std::string& m) { return names->count(m) > 0; };
    std::vector<std::string> wanted{req_.encode_method, req_.decode_method};
    for (const auto& l : req_.lengths) wanted.push_back(l.second);
    for (const auto& m : wanted) {
      if (!has(m)) {
        std::string all;
        for (const auto& n : *names) all += (all.empty() ? "" : ", ") + n;
        fail(kBadInput, req_.program + " has no method \"" + m + "\" (it has: " + all + ")");
      }
      Error le = module_->load_method(m);
      if (le != Error::Ok) fail(kBadInput, "cannot load method " + m + ": " + why(le));
    }
    double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
    full_ = describe_encode(req_.encode_method);
    for (const auto& [n, m] : req_.lengths) shorter_.emplace_back(n, describe_encode(m));
    check_decode();
    check_request();
    return load_s;
  }

  Generation generate(bool keep_logits) {
    Generation g;
    // Encode: the shortest program that holds the text (mirrors backends.choose_encode).
    const EncodeProgram* prog = &full_;
    if (req_.has_ids) {
      int64_t used = std::max<int64_t>(static_cast<int64_t>(req_.ids.size()), 1);
      for (const auto& [n, p] : shorter_) {
        if (used <= n) {
          prog = &p;
          break;
        }
      }
    }
    std::vector<EValue> inputs;
    std::vector<TensorPtr> keep;
    for (size_t i = 0; i < prog->shapes.size(); ++i) keep.push_back(encode_input(*prog, i));
    for (auto& t : keep) inputs.emplace_back(*t);
    g.encoder_len = prog->shapes[0].size() >= 2 ? prog->shapes[0][1] : 0;
    auto t0 = Clock::now();
    auto enc = module_->execute(prog->method, inputs);
    if (!enc.ok()) fail(kRuntimeFailed, prog->method + " failed: " + why(enc.error()));
    g.encode_s = std::chrono::duration<double>(Clock::now() - t0).count();

    // Decode reads its inputs in place (the artifact's decode inputs are not memory-planned):
    // set them once; each step only rewrites the token and position buffers.
    int64_t token_buf = req_.start, pos_buf = 0;
    TensorPtr token = from_blob(&token_buf, {1, 1}, ScalarType::Long);
    TensorPtr pos = from_blob(&pos_buf, {1}, ScalarType::Long);
    std::vector<EValue> dec_in{EValue(*token), EValue(*pos)};
    for (auto& v : *enc) dec_in.push_back(v);
    // A next-token program adds token_bias [1, V] to its logits before its argmax: 0, or -1e9
    // where this step's rules forbid a token (rebuilt only when the rules change).
    std::vector<float> bias(has_bias_ ? vocab_ : 0, 0.0f);
    TensorPtr bias_t;
    int bias_key = -1;
    if (has_bias_) {
      bias_t = from_blob(bias.data(), {1, static_cast<int32_t>(vocab_)}, ScalarType::Float);
      dec_in.push_back(EValue(*bias_t));
    }
    Error se = module_->set_inputs(req_.decode_method, dec_in);
    if (se != Error::Ok) fail(kRuntimeFailed, "cannot set the decode inputs: " + why(se));

    const int64_t n_prompt = static_cast<int64_t>(req_.prompt.size());
    const int64_t room = req_.max_output_len - n_prompt;
    const int64_t limit = req_.max_new_tokens < 0 ? room : req_.max_new_tokens;
    const int64_t min_new = req_.force_length ? limit : req_.min_new_tokens;
    g.stopped = limit == room ? "cache" : "max_new_tokens";
    FILE* logits_out = nullptr;
    if (keep_logits) {
      logits_out = std::fopen(req_.logits.c_str(), "wb");
      if (!logits_out) fail(kBadInput, req_.logits + ": cannot write (" + std::strerror(errno) + ")");
    }
    int64_t next = req_.start;
    for (int64_t position = 0; position < n_prompt + limit; ++position) {
      auto t = Clock::now();
      token_buf = next;
      pos_buf = position;
      const int64_t k = static_cast<int64_t>(g.tokens.size());  // index of the token this step makes
      const bool last = req_.forced_eos >= 0 && k == limit - 1 && !req_.force_length;  // the step that ends it
      const bool in_prompt = position < n_prompt;
      if (has_bias_) {  // the rules of generate.TokenBias, for the program's own argmax
        const int key = in_prompt ? 0 : 1 + (k == 0) + 2 * (k < min_new) + 4 * last;
        if (key != bias_key) {
          const float neg = -1e9f;
          std::fill(bias.begin(), bias.end(), (key != 0 && last) ? neg : 0.0f);
          if (key != 0) {
            if (k < min_new) bias[req_.eos] = neg;
            if (last) bias[req_.forced_eos] = 0.0f;
            for (int64_t id : req_.suppress) bias[id] = neg;
            if (k == 0) {
              for (int64_t id : req_.begin_suppress) bias[id] = neg;
            }
          }
          bias_key = key;
        }
      }
      auto out = module_->execute(req_.decode_method);
      if (!out.ok()) fail(kRuntimeFailed, "decode failed at position " + std::to_string(position) + ": " + why(out.error()));
      const bool need_logits = logits_out || !has_bias_ || (in_prompt && req_.prompt[position] < 0);
      if (!need_logits) {  // the program's choice: no logits read at all
        if (in_prompt) {
          next = req_.prompt[position];
          g.prompt.push_back(next);
          g.step_s.push_back(std::chrono::duration<double>(Clock::now() - t).count());
          continue;
        }
        next = (*out)[out->size() - 1].toTensor().const_data_ptr<int64_t>()[0];
        g.step_s.push_back(std::chrono::duration<double>(Clock::now() - t).count());
        if (next == req_.eos) {
          g.stopped = "eos";
          break;
        }
        g.tokens.push_back(next);
        continue;
      }
      // logits [.., V] float32 in the program's output buffer: masked and argmaxed in place.
      float* logits = (*out)[0].toTensor().mutable_data_ptr<float>();
      if (logits_out && std::fwrite(logits, sizeof(float), vocab_, logits_out) != static_cast<size_t>(vocab_)) {
        fail(kBadInput, req_.logits + ": write failed");
      }
      if (position < n_prompt) {  // a forced prompt token, or the detected language
        next = req_.prompt[position];
        if (next < 0) {
          int64_t best = req_.language_ids[0];
          for (int64_t id : req_.language_ids) {
            if (logits[id] > logits[best]) best = id;
          }
          next = best;
        }
        g.prompt.push_back(next);
        g.step_s.push_back(std::chrono::duration<double>(Clock::now() - t).count());
        continue;
      }
      // transformers' logits processors in their order: min_new_tokens, forced EOS (only it is
      // left, whatever min_new_tokens said), suppress, begin-suppress.
      const float neg = -INFINITY;
      if (k < min_new) logits[req_.eos] = neg;
      if (last) {  // the step that ends generation
        std::fill(logits, logits + vocab_, neg);
        logits[req_.forced_eos] = 0.0f;
      }
      for (int64_t id : req_.suppress) logits[id] = neg;
      if (k == 0) {
        for (int64_t id : req_.begin_suppress) logits[id] = neg;
      }
      next = argmax(logits);
      g.step_s.push_back(std::chrono::duration<double>(Clock::now() - t).count());
      if (next == req_.eos) {
        g.stopped = "eos";
        break;
      }
      g.tokens.push_back(next);
    }
    if (logits_out) std::fclose(logits_out);
    return g;
  }

  // Serve mode: another generation with the same program (ids and rules may differ).
  bool same_program(const Request& r) const {
    return r.program == req_.program && r.data == req_.data && r.encode_method == req_.encode_method &&
           r.decode_method == req_.decode_method && r.lengths == req_.lengths && r.encode_inputs == req_.encode_inputs;
  }
  void retarget(Request r) {
    req_ = std::move(r);
    check_request();
  }

  int64_t output_limit() const {
    return req_.max_new_tokens < 0 ? req_.max_output_len - static_cast<int64_t>(req_.prompt.size())
                                   : req_.max_new_tokens;
  }
  int64_t vocab() const { return vocab_; }
  bool wants_logits() const { return !req_.logits.empty(); }
  size_t threads() const { return executorch::extension::threadpool::get_threadpool()->get_thread_count(); }

 private:
  Request req_;
  std::unique_ptr<Module> module_;
  EncodeProgram full_;
  std::vector<std::pair<int64_t, EncodeProgram>> shorter_;
  int64_t vocab_ = 0;
  bool has_bias_ = false;  // decode chooses the token (token_bias in, next_token out)
  std::vector<float> features_;

  // numpy.argmax semantics: the first maximum; a NaN wins at its first occurrence.
  int64_t argmax(const float* x) const {
    int64_t best = 0;
    for (int64_t i = 0; i < vocab_; ++i) {
      if (std::isnan(x[i])) return i;
      if (x[i] > x[best]) best = i;
    }
    return best;
  }

  EncodeProgram describe_encode(const std::string& method) {
    auto meta = module_->method_meta(method);
    if (!meta.ok()) fail(kBadInput, "cannot read method " + method + ": " + why(meta.error()));
    if (meta->num_inputs() != req_.encode_inputs.size()) {
      fail(kBadInput, "method " + method + " takes " + std::to_string(meta->num_inputs()) + " inputs; the request names " +
                          std::to_string(req_.encode_inputs.size()));
    }
    EncodeProgram p{method, {}, {}};
    for (size_t i = 0; i < meta->num_inputs(); ++i) {
      auto ti = meta->input_tensor_meta(i);
      if (!ti.ok()) fail(kBadInput, "method " + method + " input " + std::to_string(i) + " is not a tensor");
      p.shapes.push_back(sizes_of(ti->sizes()));
      p.dtypes.push_back(ti->scalar_type());
    }
    return p;
  }

  void check_decode() {
    auto dec = module_->method_meta(req_.decode_method);
    auto enc = module_->method_meta(req_.encode_method);
    if (!dec.ok() || !enc.ok()) fail(kBadInput, "cannot read the encode/decode method metadata");
    // A next-token decode program (Seq2SeqParts.with_next_token) takes token_bias last and
    // returns next_token last.
    has_bias_ = dec->num_inputs() == 3 + enc->num_outputs();
    if (dec->num_inputs() != 2 + enc->num_outputs() && !has_bias_) {
      fail(kBadInput, "decode takes " + std::to_string(dec->num_inputs()) + " inputs; expected token, position and the " +
                          std::to_string(enc->num_outputs()) + " outputs of encode [and token_bias]");
    }
    if (has_bias_) {
      auto tb = dec->input_tensor_meta(dec->num_inputs() - 1);
      auto nt = dec->output_tensor_meta(dec->num_outputs() - 1);
      if (!tb.ok() || tb->scalar_type() != ScalarType::Float || !nt.ok() || nt->scalar_type() != ScalarType::Long ||
          dec->num_outputs() < 2) {
        fail(kBadInput, "decode's last input is not a float32 token_bias with an int64 next_token output");
      }
    }
    for (size_t i = 0; i < enc->num_outputs(); ++i) {
      auto o = enc->output_tensor_meta(i);
      auto d = dec->input_tensor_meta(i + 2);
      if (!o.ok() || !d.ok() || sizes_of(o->sizes()) != sizes_of(d->sizes()) || o->scalar_type() != d->scalar_type()) {
        fail(kBadInput, "encode output " + std::to_string(i) + " does not match decode input " + std::to_string(i + 2));
      }
    }
    auto logits = dec->output_tensor_meta(0);
    if (!logits.ok() || logits->scalar_type() != ScalarType::Float) fail(kBadInput, "decode output 0 is not float32 logits");
    vocab_ = numel(sizes_of(logits->sizes()));
    for (size_t i = 0; i < 2; ++i) {
      auto ti = dec->input_tensor_meta(i);
      if (!ti.ok() || ti->scalar_type() != ScalarType::Long) fail(kBadInput, "decode input " + std::to_string(i) + " is not int64");
    }
  }

  void check_id(int64_t id, const std::string& what) const {
    if (id < 0 || id >= vocab_) {
      fail(kBadInput, what + " " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(vocab_) + ")");
    }
  }

  void check_request() {
    const int64_t n_prompt = static_cast<int64_t>(req_.prompt.size());
    if (req_.max_output_len < 1) fail(kBadInput, "max_output_len must be >= 1");
    const int64_t room = req_.max_output_len - n_prompt;
    const int64_t limit = output_limit();
    if (limit > room || limit < 1) {
      fail(kBadInput, "max_new_tokens " + std::to_string(limit) + " must be between 1 and " + std::to_string(room) +
                          " (the cache of " + std::to_string(req_.max_output_len) + " positions minus the prompt)");
    }
    if (!req_.force_length && (req_.min_new_tokens < 0 || req_.min_new_tokens > limit)) {
      fail(kBadInput, "min_new_tokens must be between 0 and " + std::to_string(limit));
    }
    for (const char* what : {"decoder_start_token_id", "eos_token_id", "pad_token_id"}) {
      int64_t id = std::string(what) == "decoder_start_token_id" ? req_.start
                   : std::string(what) == "eos_token_id"         ? req_.eos
                                                                 : req_.pad;
      check_id(id, what);
    }
    if (req_.forced_eos >= 0) check_id(req_.forced_eos, "forced_eos_token_id");
    for (int64_t id : req_.prompt) {
      if (id >= 0) check_id(id, "decoder_prompt token");
      else if (req_.language_ids.empty()) fail(kBadInput, "decoder_prompt has a language slot but no language_token_ids");
    }
    for (int64_t id : req_.language_ids) check_id(id, "language token");
    for (int64_t id : req_.suppress) check_id(id, "suppress token");
    for (int64_t id : req_.begin_suppress) check_id(id, "begin_suppress token");
    for (size_t i = 0; i < full_.shapes.size(); ++i) {
      const std::string& name = req_.encode_inputs[i];
      if (full_.dtypes[i] == ScalarType::Long) {
        if (!req_.has_ids) fail(kBadInput, "encode input " + name + " needs token ids; the request has features");
        if (full_.shapes[i].size() != 2 || full_.shapes[i][0] != 1) {
          fail(kBadInput, "encode input " + name + " has shape " + shape_str(full_.shapes[i]) + "; expected [1, S]");
        }
      } else if (full_.dtypes[i] == ScalarType::Float) {
        if (req_.features.empty()) fail(kBadInput, "encode input " + name + " needs features; the request has ids");
        load_features(numel(full_.shapes[i]), name);
      } else {
        fail(kBadInput, "encode input " + name + " has a dtype the runner does not feed");
      }
    }
    if (req_.has_ids) {
      const int64_t s = full_.shapes[0][1];
      if (req_.ids.empty()) fail(kBadInput, "ids is empty");
      if (static_cast<int64_t>(req_.ids.size()) > s) {
        fail(kBadInput, std::to_string(req_.ids.size()) + " input ids; the program takes at most " + std::to_string(s));
      }
      for (int64_t id : req_.ids) check_id(id, "input id");
    }
  }

  void load_features(int64_t n, const std::string& name) {
    std::ifstream f(req_.features, std::ios::binary | std::ios::ate);
    if (!f) fail(kBadInput, req_.features + ": cannot read");
    const auto bytes = static_cast<int64_t>(f.tellg());
    if (bytes != n * static_cast<int64_t>(sizeof(float))) {
      fail(kBadInput, req_.features + ": " + std::to_string(bytes) + " bytes; encode input " + name + " needs " +
                          std::to_string(n) + " float32 values (" + std::to_string(n * 4) + " bytes)");
    }
    features_.resize(static_cast<size_t>(n));
    f.seekg(0);
    f.read(reinterpret_cast<char*>(features_.data()), bytes);
  }

  // Encode input i of `prog`: ids right-padded with pad_token_id, their mask, or the features.
  TensorPtr encode_input(const EncodeProgram& prog, size_t i) {
    const auto& shape = prog.shapes[i];
    if (prog.dtypes[i] == ScalarType::Float) {
      return executorch::extension::make_tensor_ptr(shape, std::vector<float>(features_));
    }
    const int64_t s = shape[1];
    std::vector<int64_t> v(static_cast<size_t>(s), req_.encode_inputs[i] == "attention_mask" ? 0 : req_.pad);
    for (size_t j = 0; j < req_.ids.size() && static_cast<int64_t>(j) < s; ++j) {
      v[j] = req_.encode_inputs[i] == "attention_mask" ? 1 : req_.ids[j];
    }
    return executorch::extension::make_tensor_ptr(shape, std::move(v));
  }
};

// numpy.percentile's default (linear) on milliseconds, rounded like the Python probe.
double percentile_ms(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  double pos = q / 100.0 * static_cast<double>(v.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(pos)), hi = std::min(lo + 1, v.size() - 1);
  double x = (v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo))) * 1000.0;
  return std::round(x * 1000.0) / 1000.0;
}

std::string num(double x) {
  std::ostringstream s;
  s.precision(10);
  s << x;
  return s.str();
}

std::string id_list(const std::vector<int64_t>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + std::to_string(v[i]);
  return out + "]";
}

std::string read_all(const std::string& path) {
  if (path == "-") {
    std::ostringstream s;
    s << std::cin.rdbuf();
    return s.str();
  }
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(kBadInput, path + ": cannot read the request");
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

int parse_count(const char* flag, const char* value) {
  char* end = nullptr;
  long v = value ? std::strtol(value, &end, 10) : -1;
  if (!value || *end != '\0' || v < 0 || v > 1000000) fail(kBadInput, std::string(flag) + " needs a count >= 0");
  return static_cast<int>(v);
}

std::string single_json(const Generation& g, int64_t vocab) {
  std::string out = "{\"ids\":" + id_list(g.tokens) + ",\"prompt\":" + id_list(g.prompt) + ",\"stopped\":\"" +
                    g.stopped + "\",\"encoder_len\":" + std::to_string(g.encoder_len) +
                    ",\"vocab\":" + std::to_string(vocab) + ",\"encode_ms\":" + num(g.encode_s * 1000) +
                    ",\"step_ms\":[";
  for (size_t i = 0; i < g.step_s.size(); ++i) out += (i ? "," : "") + num(g.step_s[i] * 1000);
  return out + "]";
}

// --serve: one JSON request per stdin line, one JSON answer per stdout line ({"error": ...}
// for a request it refuses); the program stays loaded while requests name the same one.
int serve(int threads) {
  std::unique_ptr<Runner> runner;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::string out;
    try {
      Request req = parse_request(line);
      if (threads > 0) req.threads = threads;
      double load_s = 0;
      if (runner && runner->same_program(req)) {
        runner->retarget(std::move(req));
      } else {
        runner.reset();
        auto fresh = std::make_unique<Runner>(std::move(req));
        load_s = fresh->load();
        runner = std::move(fresh);
      }
      Generation g = runner->generate(runner->wants_logits());
      out = single_json(g, runner->vocab()) + ",\"load_ms\":" + num(std::round(load_s * 1e6) / 1000) + "}";
    } catch (const Failure& f) {
      std::string msg = f.message;
      std::replace(msg.begin(), msg.end(), '\n', ' ');
      out = "{\"error\":" + edgeseq::json::quote(msg) + ",\"code\":" + std::to_string(f.code) + "}";
    }
    std::printf("%s\n", out.c_str());
    std::fflush(stdout);
  }
  return 0;
}

int run(int argc, char** argv) {
  std::string request_path;
  int runs = 0, warmup = 0, threads = 0;
  bool serving = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--verbose") g_verbose = true;
    else if (a == "--serve") serving = true;
    else if (a == "--runs") runs = parse_count("--runs", i + 1 < argc ? argv[++i] : nullptr);
    else if (a == "--warmup") warmup = parse_count("--warmup", i + 1 < argc ? argv[++i] : nullptr);
    else if (a == "--threads") threads = parse_count("--threads", i + 1 < argc ? argv[++i] : nullptr);
    else if (a == "-h" || a == "--help") {
      std::printf("usage: edgeseq-runner REQUEST.json|- [--runs N] [--warmup K] [--threads T] [--verbose]\n       edgeseq-runner --serve [--threads T] [--verbose]   (one JSON request per stdin line)\n");
      return 0;
    } else if (!a.empty() && a[0] == '-' && a != "-") fail(kBadInput, "unknown option " + a);
    else if (request_path.empty()) request_path = a;
    else fail(kBadInput, "one request only (got " + request_path + " and " + a + ")");
  }
  if (serving) {
    if (!request_path.empty() || runs > 0) fail(kBadInput, "--serve reads requests from stdin; no REQUEST or --runs");
    return serve(threads);
  }
  if (request_path.empty()) fail(kBadInput, "usage: edgeseq-runner REQUEST.json|- [--runs N] [--warmup K] [--threads T]");
  Request req = parse_request(read_all(request_path));
  if (threads > 0) req.threads = threads;
  if (!req.logits.empty() && runs > 0) fail(kBadInput, "logits are written for a single generation, not with --runs");
  Runner runner(std::move(req));
  const double load_s = runner.load();
  std::string out;
  if (runs == 0) {
    out = single_json(runner.generate(runner.wants_logits()), runner.vocab());
  } else {
    std::vector<double> ttft, per_token;
    double total = 0;
    Generation g;
    for (int i = 0; i < warmup + runs; ++i) {
      g = runner.generate(false);
      if (i < warmup) continue;
      const size_t first = g.prompt.size() + 1;  // steps up to and including the first output token
      double t = g.encode_s;
      for (size_t s = 0; s < g.step_s.size() && s < first; ++s) t += g.step_s[s];
      ttft.push_back(t);
      for (size_t s = first; s < g.step_s.size(); ++s) per_token.push_back(g.step_s[s]);
      total += g.encode_s;
      for (double s : g.step_s) total += s;
    }
    out = "{\"ids\":" + id_list(g.tokens) + ",\"prompt\":" + id_list(g.prompt) + ",\"stopped\":\"" + g.stopped +
          "\",\"encoder_len\":" + std::to_string(g.encoder_len) + ",\"runs\":" + std::to_string(runs) +
          ",\"warmup\":" + std::to_string(warmup) + ",\"ttft_ms\":{\"p50\":" + num(percentile_ms(ttft, 50)) +
          ",\"p90\":" + num(percentile_ms(ttft, 90)) + "},\"decode_ms_per_token\":";
    out += per_token.empty() ? "null"
                             : "{\"p50\":" + num(percentile_ms(per_token, 50)) + ",\"p90\":" +
                                   num(percentile_ms(per_token, 90)) + "}";
    const double tps = static_cast<double>(runner.output_limit()) * runs / total;
    out += ",\"tokens_per_s\":" + num(std::round(tps * 100) / 100);
  }
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  out += ",\"load_ms\":" + num(std::round(load_s * 1e6) / 1000) + ",\"peak_rss_mb\":" +
         num(std::round(static_cast<double>(ru.ru_maxrss) / 1024.0 * 10) / 10) +
         ",\"threads\":" + std::to_string(runner.threads()) + "}";
  std::printf("%s\n", out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) std::signal(sig, on_signal);
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--verbose") g_verbose = true;
  }
  executorch::runtime::register_pal(
      executorch::runtime::PalImpl::create(emit_log, __FILE__));
  executorch::runtime::runtime_init();
  try {
    return run(argc, argv);
  } catch (const Failure& f) {
    std::string line = f.message;
    std::replace(line.begin(), line.end(), '\n', ' ');
    std::fprintf(stderr, "error: %s\n", line.c_str());
    return f.code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return kRuntimeFailed;
  }
}
