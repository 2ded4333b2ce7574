// Times ggml_mul_mat(W, x) on ggml's CPU backend: llama.cpp's CPU matmul kernels for
// the weight types EMPAS is compared with (issue 17), on nn.Linear shapes.
//
//   ggml_mul_mat_bench [--threads N] [--budget-s S] [--repack on|off]
//                      [--types q4_0,q4_K,q8_0,f16,f32] [--shapes 576x576,...]
//                      [--batches 1,4,512] [--min-reps N] [--max-reps N] [--seed N]
//
// Shapes are [out_features x in_features] of nn.Linear.weight. In ggml terms W has
// ne0 = in_features (k), ne1 = out_features; x (fp32 activations, as llama.cpp feeds
// them) has ne0 = k, ne1 = batch; the result is [out_features, batch].
//
// W ~ N(0, 0.02) (the same float matrix for every type of a shape), converted with
// ggml_quantize_chunk (no importance matrix); x ~ N(0, 1).
//
// A k-quant needs in_features to be a multiple of its 256-value super-block (576 is
// not): there the case runs the type llama-quantize falls back to for such a tensor
// (q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0, per tensor_type_fallback in
// src/llama-quant.cpp) and reports both ("requested" and "type"); a type without a
// fallback is reported as skipped.
//
// --repack on (default, what llama.cpp does when it loads a model): a weight goes into
// the first of the CPU device's extra buffer types (CPU_REPACK: q4_0 / q4_K are
// re-laid out in interleaved 8-row blocks on AVX2) that the device says supports this
// mul_mat, else into the plain CPU buffer. --repack off: always the plain CPU buffer
// (what test-backend-ops measures). Each case reports the buffer type used.
//
// Per (shape, batch) one graph per type is built once; every type is computed to warm
// up (3 rounds, or fewer once a second has gone to it), then the rounds: one timed
// ggml_backend_graph_compute per type per round, the types interleaved so that load
// drifts on the machine hit all alike. The number of rounds is what is left of
// --budget-s (timed rounds only) spread evenly over the (shape, batch) groups still to
// run, clamped to [--min-reps, --max-reps], so that the time the small cases leave
// unused goes to the large batch-512 ones. One JSON object per case on stdout;
// progress and the backend's feature flags on stderr.

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

namespace {

struct Options {
  int threads = 2;
  double budget_s = 140.0;
  bool repack = true;
  int min_reps = 3;
  int max_reps = 1000;
  uint64_t seed = 1234;
  std::vector<ggml_type> types = {GGML_TYPE_Q4_0, GGML_TYPE_Q4_K, GGML_TYPE_Q8_0, GGML_TYPE_F16,
                                  GGML_TYPE_F32};
  std::vector<std::pair<int64_t, int64_t>> shapes = {{576, 576},   {1536, 576},   {576, 1536},
                                                     {4096, 4096}, {11008, 4096}, {4096, 11008}};
  std::vector<int64_t> batches = {1, 4, 512};
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "error: %s\nusage: ggml_mul_mat_bench [--threads N] [--budget-s S] [--repack on|off]\n"
               "  [--types q4_0,q4_K,q8_0,f16,f32] [--shapes OUTxIN,...] [--batches 1,4,512]\n"
               "  [--min-reps N] [--max-reps N] [--seed N]\n",
               msg);
  std::exit(2);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(sep, start);
    if (end == std::string::npos) end = s.size();
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

int64_t to_int(const std::string& s, const char* what) {
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (end == s.c_str() || *end != '\0' || v <= 0) usage(what);
  return v;
}

ggml_type type_from_name(const std::string& name) {
  for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
    const char* n = ggml_type_name(static_cast<ggml_type>(t));
    if (n != nullptr && name == n) return static_cast<ggml_type>(t);
  }
  usage(("unknown ggml type " + name).c_str());
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) usage(("missing value for " + a).c_str());
    std::string v = argv[++i];
    if (a == "--threads") {
      o.threads = static_cast<int>(to_int(v, "--threads"));
    } else if (a == "--budget-s") {
      o.budget_s = std::atof(v.c_str());
      if (!(o.budget_s > 0)) usage("--budget-s must be > 0");
    } else if (a == "--repack") {
      if (v != "on" && v != "off") usage("--repack on|off");
      o.repack = v == "on";
    } else if (a == "--min-reps") {
      o.min_reps = static_cast<int>(to_int(v, "--min-reps"));
    } else if (a == "--max-reps") {
      o.max_reps = static_cast<int>(to_int(v, "--max-reps"));
    } else if (a == "--seed") {
      o.seed = static_cast<uint64_t>(to_int(v, "--seed"));
    } else if (a == "--types") {
      o.types.clear();
      for (const auto& t : split(v, ',')) o.types.push_back(type_from_name(t));
    } else if (a == "--shapes") {
      o.shapes.clear();
      for (const auto& s : split(v, ',')) {
        auto p = split(s, 'x');
        if (p.size() != 2) usage("--shapes takes OUTxIN,...");
        o.shapes.emplace_back(to_int(p[0], "--shapes"), to_int(p[1], "--shapes"));
      }
    } else if (a == "--batches") {
      o.batches.clear();
      for (const auto& b : split(v, ',')) o.batches.push_back(to_int(b, "--batches"));
    } else {
      usage(("unknown option " + a).c_str());
    }
  }
  if (o.types.empty() || o.shapes.empty() || o.batches.empty()) usage("empty list");
  if (o.max_reps < o.min_reps) usage("--max-reps < --min-reps");
  return o;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The type llama-quantize stores instead of `type` when a row of k values does not
// split into its blocks; GGML_TYPE_COUNT when there is none here.
ggml_type row_fallback(ggml_type type, int64_t k) {
  if (k % ggml_blck_size(type) == 0) return type;
  ggml_type fb = GGML_TYPE_COUNT;
  switch (type) {
    case GGML_TYPE_Q4_K:
      fb = GGML_TYPE_Q5_0;
      break;
    case GGML_TYPE_Q5_K:
      fb = GGML_TYPE_Q5_1;
      break;
    case GGML_TYPE_Q6_K:
      fb = GGML_TYPE_Q8_0;
      break;
    default:
      break;
  }
  return fb != GGML_TYPE_COUNT && k % ggml_blck_size(fb) == 0 ? fb : GGML_TYPE_COUNT;
}

// A weight tensor alone in its context and backend buffer.
struct Weight {
  ggml_type requested;
  ggml_type type;
  ggml_context* ctx = nullptr;
  ggml_backend_buffer_t buf = nullptr;
  ggml_tensor* w = nullptr;
};

// Does `dev` run mul_mat(W, x) with W in a buffer of type `buft`? Asked with a
// zero-size buffer of that type standing in for W's, and a throwaway op.
bool buft_supports_mul_mat(ggml_backend_dev_t dev, ggml_backend_buffer_type_t buft, ggml_type type, int64_t k,
                           int64_t n_out) {
  ggml_init_params ip = {4 * ggml_tensor_overhead(), nullptr, true};
  ggml_context* ctx = ggml_init(ip);
  ggml_tensor* w = ggml_new_tensor_2d(ctx, type, k, n_out);
  ggml_tensor* x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, 1);
  ggml_tensor* y = ggml_mul_mat(ctx, w, x);
  ggml_backend_buffer_t dummy = ggml_backend_buft_alloc_buffer(buft, 0);
  w->buffer = dummy;
  bool ok = ggml_backend_dev_supports_op(dev, y);
  w->buffer = nullptr;
  ggml_backend_buffer_free(dummy);
  ggml_free(ctx);
  return ok;
}

Weight make_weight(ggml_backend_dev_t dev, const std::vector<ggml_backend_buffer_type_t>& extra,
                   ggml_type type, int64_t k, int64_t n_out, const std::vector<float>& values) {
  Weight wt;
  wt.requested = type;
  wt.type = type;
  ggml_backend_buffer_type_t buft = ggml_backend_cpu_buffer_type();
  for (auto* b : extra) {
    if (buft_supports_mul_mat(dev, b, type, k, n_out)) {
      buft = b;
      break;
    }
  }
  ggml_init_params ip = {ggml_tensor_overhead(), nullptr, true};
  wt.ctx = ggml_init(ip);
  wt.w = ggml_new_tensor_2d(wt.ctx, type, k, n_out);
  wt.buf = ggml_backend_alloc_ctx_tensors_from_buft(wt.ctx, buft);
  if (wt.buf == nullptr) {
    std::fprintf(stderr, "error: cannot allocate %s weight %lldx%lld\n", ggml_type_name(type),
                 static_cast<long long>(n_out), static_cast<long long>(k));
    std::exit(1);
  }
  std::vector<uint8_t> data(ggml_nbytes(wt.w));
  size_t n = ggml_quantize_chunk(type, values.data(), data.data(), 0, n_out, k, nullptr);
  if (n != data.size()) {
    std::fprintf(stderr, "error: ggml_quantize_chunk wrote %zu bytes, expected %zu\n", n, data.size());
    std::exit(1);
  }
  ggml_backend_tensor_set(wt.w, data.data(), 0, data.size());
  return wt;
}

// mul_mat(W, x) for one weight at one batch: its own context holding x, y and the graph.
struct Case {
  const Weight* wt;
  ggml_context* ctx = nullptr;
  ggml_backend_buffer_t buf = nullptr;
  ggml_cgraph* graph = nullptr;
  std::vector<double> times;
};

Case make_case(ggml_backend_t backend, const Weight& wt, int64_t batch, const std::vector<float>& x_values) {
  Case c;
  c.wt = &wt;
  ggml_init_params ip = {4 * ggml_tensor_overhead() + ggml_graph_overhead(), nullptr, true};
  c.ctx = ggml_init(ip);
  int64_t k = wt.w->ne[0];
  ggml_tensor* x = ggml_new_tensor_2d(c.ctx, GGML_TYPE_F32, k, batch);
  ggml_tensor* y = ggml_mul_mat(c.ctx, wt.w, x);
  c.graph = ggml_new_graph(c.ctx);
  ggml_build_forward_expand(c.graph, y);
  c.buf = ggml_backend_alloc_ctx_tensors(c.ctx, backend);
  ggml_backend_tensor_set(x, x_values.data(), 0, ggml_nbytes(x));
  return c;
}

double compute(ggml_backend_t backend, Case& c) {
  double t0 = now_s();
  ggml_status st = ggml_backend_graph_compute(backend, c.graph);
  double t = now_s() - t0;
  if (st != GGML_STATUS_SUCCESS) {
    std::fprintf(stderr, "error: graph compute failed (%d)\n", static_cast<int>(st));
    std::exit(1);
  }
  return t;
}

void fill_normal(std::vector<float>& v, size_t n, float stddev, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, stddev);
  v.resize(n);
  for (auto& f : v) f = dist(rng);
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = parse(argc, argv);

  ggml_backend_t backend = ggml_backend_cpu_init();
  if (backend == nullptr) {
    std::fprintf(stderr, "error: no CPU backend\n");
    return 1;
  }
  ggml_backend_cpu_set_n_threads(backend, opt.threads);
  ggml_backend_dev_t dev = ggml_backend_get_device(backend);
  ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);

  std::vector<ggml_backend_buffer_type_t> extra;
  if (opt.repack) {
    auto get_extra = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts"));
    if (get_extra != nullptr) {
      for (ggml_backend_buffer_type_t* b = get_extra(dev); b != nullptr && *b != nullptr; ++b) {
        extra.push_back(*b);
      }
    }
  }

  std::fprintf(stderr, "# ggml %s (%s), threads %d, repack %s, extra buffer types:", ggml_version(),
               ggml_commit(), opt.threads, opt.repack ? "on" : "off");
  for (auto* b : extra) std::fprintf(stderr, " %s", ggml_backend_buft_name(b));
  std::fprintf(stderr, "\n# features:");
  auto get_features = reinterpret_cast<ggml_backend_get_features_t>(
      ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features"));
  if (get_features != nullptr) {
    for (ggml_backend_feature* f = get_features(reg); f != nullptr && f->name != nullptr; ++f) {
      std::fprintf(stderr, " %s=%s", f->name, f->value);
    }
  }
  std::fprintf(stderr, "\n");

  const size_t n_groups = opt.shapes.size() * opt.batches.size();
  size_t groups_done = 0;
  double timed_s = 0.0;  // spent in timed rounds so far
  std::mt19937_64 rng(opt.seed);
  std::vector<float> w_values, x_values;
  double t_start = now_s();

  for (const auto& [n_out, k] : opt.shapes) {
    fill_normal(w_values, static_cast<size_t>(n_out * k), 0.02f, rng);
    std::vector<Weight> weights;
    for (ggml_type t : opt.types) {
      ggml_type actual = row_fallback(t, k);
      if (actual == GGML_TYPE_COUNT) {
        for (int64_t batch : opt.batches) {
          std::printf(
              "{\"out\": %lld, \"in\": %lld, \"batch\": %lld, \"requested\": \"%s\", \"skipped\": "
              "\"in_features is not a multiple of the block size %lld\"}\n",
              static_cast<long long>(n_out), static_cast<long long>(k), static_cast<long long>(batch),
              ggml_type_name(t), static_cast<long long>(ggml_blck_size(t)));
        }
        continue;
      }
      weights.push_back(make_weight(dev, extra, actual, k, n_out, w_values));
      weights.back().requested = t;
    }

    for (int64_t batch : opt.batches) {
      fill_normal(x_values, static_cast<size_t>(k * batch), 1.0f, rng);
      std::vector<Case> cases;
      for (const auto& wt : weights) cases.push_back(make_case(backend, wt, batch, x_values));

      double round_s = 0.0, warm_s = 0.0;
      for (int warm = 0; warm < 3 && warm_s < 1.0; ++warm) {
        round_s = 0.0;
        for (auto& c : cases) round_s += compute(backend, c);
        warm_s += round_s;
      }
      double group_budget =
          std::max(0.0, opt.budget_s - timed_s) / static_cast<double>(n_groups - groups_done);
      int reps = static_cast<int>(group_budget / std::max(round_s, 1e-9));
      reps = std::clamp(reps, opt.min_reps, opt.max_reps);

      double t0 = now_s();
      for (int r = 0; r < reps; ++r) {
        for (auto& c : cases) c.times.push_back(compute(backend, c));
      }
      timed_s += now_s() - t0;
      ++groups_done;

      for (auto& c : cases) {
        std::vector<double> t = c.times;
        std::sort(t.begin(), t.end());
        size_t m = t.size();
        double median = m % 2 ? t[m / 2] : 0.5 * (t[m / 2 - 1] + t[m / 2]);
        double flop = 2.0 * static_cast<double>(n_out) * static_cast<double>(k) * static_cast<double>(batch);
        size_t wbytes = ggml_nbytes(c.wt->w);
        std::printf(
            "{\"out\": %lld, \"in\": %lld, \"batch\": %lld, \"requested\": \"%s\", \"type\": \"%s\", "
            "\"buffer\": \"%s\", "
            "\"threads\": %d, \"weight_bytes\": %zu, \"reps\": %d, \"median_ms\": %.6f, \"min_ms\": %.6f, "
            "\"gflops\": %.3f, \"weight_gbps\": %.3f}\n",
            static_cast<long long>(n_out), static_cast<long long>(k), static_cast<long long>(batch),
            ggml_type_name(c.wt->requested), ggml_type_name(c.wt->type), ggml_backend_buffer_name(c.wt->buf),
            opt.threads, wbytes, reps, median * 1e3, t[0] * 1e3, flop / median * 1e-9,
            static_cast<double>(wbytes) / median * 1e-9);
        std::fflush(stdout);
        ggml_backend_buffer_free(c.buf);
        ggml_free(c.ctx);
      }
      std::fprintf(stderr, "# %lldx%lld batch %lld: %d rounds, %.1f s elapsed\n",
                   static_cast<long long>(n_out), static_cast<long long>(k), static_cast<long long>(batch),
                   reps, now_s() - t_start);
    }
    for (auto& wt : weights) {
      ggml_backend_buffer_free(wt.buf);
      ggml_free(wt.ctx);
    }
  }
  ggml_backend_free(backend);
  ggml_quantize_free();

  // our own CPU time, so that the caller can tell how much CPU others used meanwhile
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  double cpu_s = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                 1e-6 * static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  std::fprintf(stderr, "# cpu_s: %.2f wall_s: %.2f\n", cpu_s, now_s() - t_start);
  return 0;
}
