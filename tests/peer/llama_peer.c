// llama_peer: a tiny harness around the prebuilt llama.cpp libraries (.peer/lib), used by
// tests/llamacpp_peer_test.cpp to cross-check GGUF files written by quantkit.
//
//   llama_peer logits     MODEL.gguf TOKENS_CSV OUT.bin   logits of every position, n*n_vocab f32
//   llama_peer tokenize   MODEL.gguf TEXT_FILE            token ids (BOS added), comma-separated
//   llama_peer perplexity MODEL.gguf TEXT_FILE CTX        "ppl <value> <scored_tokens>"
//   llama_peer quantize   IN.gguf OUT.gguf TYPE THREADS   llama-quantize's default recipe for
//                         TYPE (q4_0, q8_0, q4_k_m, ...); prints "seconds <wall time of the call>"
//
// CPU only, no mmap. llama.cpp's log is silenced unless QK_PEER_VERBOSE is set.
// Environment: QK_PEER_THREADS (default 1: the model is tiny, and ggml's spinning worker
// threads slow it down ~10x when the CPUs are busy with other work), QK_PEER_LIB_DIR
// (where libggml-cpu-*.so are; default: the compile-time QK_PEER_LIB_DIR, else the
// directory of the loaded libggml),
// QK_PEER_KV=f16|f32 (KV-cache type) and QK_PEER_FA=on|off|auto (flash attention).
// Defaults: `logits` computes in float32 throughout (F32 KV cache, flash attention off: the
// CPU flash-attention kernel rounds Q/K/V to F16, which alone moves the logits of the F32
// aidreams model by ~3e-3); `perplexity` uses llama-perplexity's defaults (F16 KV cache,
// flash attention auto, i.e. on for the CPU).
//
// `perplexity` follows tools/perplexity/perplexity.cpp (llama-perplexity with -f FILE -c CTX
// and default options): the file's text loses one trailing '\n' (as `-f` does), is
// tokenized once with BOS, n_chunk = n_tokens / CTX non-overlapping windows, each window's
// first token becomes BOS, positions CTX/2 .. CTX-2 predict the next token, and
// PPL = exp(mean NLL).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-backend.h"
#include "llama.h"

static void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("llama_peer: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static void quiet_log(enum ggml_log_level level, const char* text, void* user_data) {
  (void)level;
  (void)text;
  (void)user_data;
}

static int env_int(const char* name, int def) {
  const char* v = getenv(name);
  if (!v || !*v) return def;
  char* end = NULL;
  long x = strtol(v, &end, 10);
  if (*end || x <= 0 || x > 1024) die("bad %s=%s", name, v);
  return (int)x;
}

static enum ggml_type kv_type(enum ggml_type def) {
  const char* v = getenv("QK_PEER_KV");
  if (!v || !*v) return def;
  if (!strcmp(v, "f32")) return GGML_TYPE_F32;
  if (!strcmp(v, "f16")) return GGML_TYPE_F16;
  die("bad QK_PEER_KV=%s (f32 or f16)", v);
  return def;
}

// Loads the CPU backend (libggml-cpu-<variant>.so, best variant for this CPU) from the
// directory of the prebuilt libraries; libggml loads backends dynamically.
static void load_backends(void) {
  static char dir[4096];
  const char* d = getenv("QK_PEER_LIB_DIR");
#ifdef QK_PEER_LIB_DIR
  if (!d || !*d) d = QK_PEER_LIB_DIR;
#endif
  if (!d || !*d) {
    Dl_info info;
    if (dladdr((void*)&ggml_backend_load_all_from_path, &info) && info.dli_fname) {
      snprintf(dir, sizeof dir, "%s", info.dli_fname);
      d = dirname(dir);
    }
  }
  ggml_backend_load_all_from_path(d);
  if (ggml_backend_reg_count() == 0) die("no ggml backend could be loaded from %s", d ? d : "(default paths)");
  if (!ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU))
    die("no CPU backend (libggml-cpu-*.so) found in %s", d ? d : "(default paths)");
}

static enum llama_flash_attn_type flash_attn(enum llama_flash_attn_type def) {
  const char* v = getenv("QK_PEER_FA");
  if (!v || !*v) return def;
  if (!strcmp(v, "on")) return LLAMA_FLASH_ATTN_TYPE_ENABLED;
  if (!strcmp(v, "off")) return LLAMA_FLASH_ATTN_TYPE_DISABLED;
  if (!strcmp(v, "auto")) return LLAMA_FLASH_ATTN_TYPE_AUTO;
  die("bad QK_PEER_FA=%s (on, off or auto)", v);
  return def;
}

static struct llama_model* load_model(const char* path) {
  struct llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  mp.load_mode = LLAMA_LOAD_MODE_NONE;  // read the file, no mmap
  mp.lazy_mode = LLAMA_LAZY_MODE_OFF;
  mp.use_extra_bufts = false;           // no weight repacking: plain CPU buffers
  struct llama_model* m = llama_model_load_from_file(path, mp);
  if (!m) die("llama.cpp failed to load %s (rerun with QK_PEER_VERBOSE=1 for its log)", path);
  return m;
}

static struct llama_context* make_context(struct llama_model* m, int n_ctx, enum ggml_type kv,
                                          enum llama_flash_attn_type fa) {
  struct llama_context_params cp = llama_context_default_params();
  const int threads = env_int("QK_PEER_THREADS", 1);
  cp.n_ctx = (uint32_t)n_ctx;
  cp.n_batch = (uint32_t)n_ctx;
  cp.n_ubatch = (uint32_t)n_ctx;
  cp.n_seq_max = 1;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  cp.type_k = kv;
  cp.type_v = kv;
  cp.flash_attn_type = fa;
  cp.no_perf = true;
  struct llama_context* ctx = llama_init_from_model(m, cp);
  if (!ctx) die("llama.cpp failed to create a context (n_ctx %d)", n_ctx);
  return ctx;
}

static char* read_all(const char* path, size_t* len) {
  FILE* f = fopen(path, "rb");
  if (!f) die("%s: %s", path, strerror(errno));
  size_t cap = 1 << 16, n = 0;
  char* buf = malloc(cap + 1);
  if (!buf) die("out of memory");
  for (;;) {
    if (n == cap) {
      cap *= 2;
      buf = realloc(buf, cap + 1);
      if (!buf) die("out of memory");
    }
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) break;
  }
  if (ferror(f)) die("%s: read error", path);
  fclose(f);
  buf[n] = 0;
  *len = n;
  return buf;
}

static llama_token* tokenize(const struct llama_model* m, const char* text, size_t len, int* n_out) {
  const struct llama_vocab* vocab = llama_model_get_vocab(m);
  if (len > INT32_MAX - 8) die("text too long");
  int cap = (int)len + 8;
  llama_token* toks = malloc(sizeof(llama_token) * (size_t)cap);
  if (!toks) die("out of memory");
  int n = llama_tokenize(vocab, text, (int32_t)len, toks, cap, /*add_special*/ true, /*parse_special*/ false);
  if (n < 0) {
    if (n == INT32_MIN) die("tokenization overflow");
    cap = -n;
    toks = realloc(toks, sizeof(llama_token) * (size_t)cap);
    if (!toks) die("out of memory");
    n = llama_tokenize(vocab, text, (int32_t)len, toks, cap, true, false);
    if (n < 0) die("tokenization failed");
  }
  *n_out = n;
  return toks;
}

static int cmd_logits(const char* model_path, const char* csv, const char* out_path) {
  int cap = 16, n = 0;
  llama_token* toks = malloc(sizeof(llama_token) * (size_t)cap);
  for (const char* p = csv; *p;) {
    char* end = NULL;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (end == p || errno || v < 0 || v > INT32_MAX) die("bad token list near '%.20s'", p);
    if (n == cap) toks = realloc(toks, sizeof(llama_token) * (size_t)(cap *= 2));
    toks[n++] = (llama_token)v;
    p = end;
    if (*p == ',') ++p;
    else if (*p) die("bad token list near '%.20s'", p);
  }
  if (n == 0) die("empty token list");

  struct llama_model* m = load_model(model_path);
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(m));
  for (int i = 0; i < n; ++i)
    if (toks[i] >= n_vocab) die("token %d out of range (vocab %d)", toks[i], n_vocab);
  struct llama_context* ctx = make_context(m, n, kv_type(GGML_TYPE_F32), flash_attn(LLAMA_FLASH_ATTN_TYPE_DISABLED));

  struct llama_batch batch = llama_batch_init(n, 0, 1);
  for (int i = 0; i < n; ++i) {
    batch.token[i] = toks[i];
    batch.pos[i] = i;
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = 0;
    batch.logits[i] = 1;
  }
  batch.n_tokens = n;
  int rc = llama_decode(ctx, batch);
  if (rc != 0) die("llama_decode failed (%d)", rc);

  FILE* out = fopen(out_path, "wb");
  if (!out) die("%s: %s", out_path, strerror(errno));
  for (int i = 0; i < n; ++i) {
    const float* l = llama_get_logits_ith(ctx, i);
    if (!l) die("no logits for position %d", i);
    if (fwrite(l, sizeof(float), (size_t)n_vocab, out) != (size_t)n_vocab) die("%s: write error", out_path);
  }
  if (fclose(out) != 0) die("%s: write error", out_path);

  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(m);
  free(toks);
  return 0;
}

static int cmd_tokenize(const char* model_path, const char* text_path) {
  size_t len = 0;
  char* text = read_all(text_path, &len);
  struct llama_model_params mp = llama_model_default_params();
  mp.vocab_only = true;
  mp.load_mode = LLAMA_LOAD_MODE_NONE;
  struct llama_model* m = llama_model_load_from_file(model_path, mp);
  if (!m) die("llama.cpp failed to load the vocabulary of %s (rerun with QK_PEER_VERBOSE=1)", model_path);
  int n = 0;
  llama_token* toks = tokenize(m, text, len, &n);
  for (int i = 0; i < n; ++i) printf(i ? ",%d" : "%d", toks[i]);
  printf("\n");
  if (fflush(stdout) != 0) die("stdout: write error");
  free(toks);
  free(text);
  llama_model_free(m);
  return 0;
}

static int cmd_perplexity(const char* model_path, const char* text_path, const char* ctx_arg) {
  char* end = NULL;
  long n_ctx = strtol(ctx_arg, &end, 10);
  if (*end || n_ctx < 4 || n_ctx > 1 << 20) die("bad CTX '%s'", ctx_arg);
  size_t len = 0;
  char* text = read_all(text_path, &len);
  if (len > 0 && text[len - 1] == '\n') text[--len] = 0;  // as llama-perplexity's -f does

  struct llama_model* m = load_model(model_path);
  const struct llama_vocab* vocab = llama_model_get_vocab(m);
  const int n_vocab = llama_vocab_n_tokens(vocab);
  const bool add_bos = llama_vocab_get_add_bos(vocab);
  const llama_token bos = llama_vocab_bos(vocab);
  int n_tokens = 0;
  llama_token* toks = tokenize(m, text, len, &n_tokens);
  if (n_tokens < 2 * n_ctx) die("text has %d tokens, need at least %ld for CTX %ld", n_tokens, 2 * n_ctx, n_ctx);

  struct llama_context* ctx = make_context(m, (int)n_ctx, kv_type(GGML_TYPE_F16), flash_attn(LLAMA_FLASH_ATTN_TYPE_AUTO));
  struct llama_batch batch = llama_batch_init((int)n_ctx, 0, 1);
  const int n_chunk = n_tokens / (int)n_ctx;
  const int first = (int)n_ctx / 2;
  double nll = 0.0;
  long count = 0;
  for (int c = 0; c < n_chunk; ++c) {
    const int start = c * (int)n_ctx;
    llama_memory_clear(llama_get_memory(ctx), true);
    for (int k = 0; k < n_ctx; ++k) {
      batch.token[k] = (k == 0 && add_bos) ? bos : toks[start + k];
      batch.pos[k] = k;
      batch.n_seq_id[k] = 1;
      batch.seq_id[k][0] = 0;
      batch.logits[k] = k >= first;
    }
    batch.n_tokens = (int)n_ctx;
    int rc = llama_decode(ctx, batch);
    if (rc != 0) die("llama_decode failed (%d) on window %d", rc, c);
    // Positions first .. n_ctx-2 predict tokens first+1 .. n_ctx-1 (log-softmax as
    // perplexity.cpp computes it: float max, double sum of expf).
    for (int k = first; k < n_ctx - 1; ++k) {
      const float* l = llama_get_logits_ith(ctx, k);
      if (!l) die("no logits for position %d", k);
      float mx = l[0];
      for (int v = 1; v < n_vocab; ++v) mx = l[v] > mx ? l[v] : mx;
      double sum = 0.0;
      for (int v = 0; v < n_vocab; ++v) sum += expf(l[v] - mx);
      const llama_token target = toks[start + k + 1];
      nll -= l[target] - mx - log(sum);
      ++count;
    }
  }
  printf("ppl %.6f %ld\n", exp(nll / (double)count), count);
  if (fflush(stdout) != 0) die("stdout: write error");

  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(m);
  free(toks);
  free(text);
  return 0;
}

// File types by llama-quantize's names (lower case) for `quantize`.
static const struct {
  const char* name;
  enum llama_ftype ftype;
} kFtypes[] = {
    {"q4_0", LLAMA_FTYPE_MOSTLY_Q4_0},     {"q4_1", LLAMA_FTYPE_MOSTLY_Q4_1},     {"q5_0", LLAMA_FTYPE_MOSTLY_Q5_0},
    {"q5_1", LLAMA_FTYPE_MOSTLY_Q5_1},     {"q8_0", LLAMA_FTYPE_MOSTLY_Q8_0},     {"q2_k", LLAMA_FTYPE_MOSTLY_Q2_K},
    {"q3_k_m", LLAMA_FTYPE_MOSTLY_Q3_K_M}, {"q4_k_m", LLAMA_FTYPE_MOSTLY_Q4_K_M}, {"q5_k_m", LLAMA_FTYPE_MOSTLY_Q5_K_M},
    {"q6_k", LLAMA_FTYPE_MOSTLY_Q6_K},
};

static int cmd_quantize(const char* in_path, const char* out_path, const char* type, const char* threads_arg) {
  char* end = NULL;
  long threads = strtol(threads_arg, &end, 10);
  if (*end || threads < 1 || threads > 1024) die("bad THREADS '%s'", threads_arg);
  struct llama_model_quantize_params qp = llama_model_quantize_default_params();
  size_t i = 0;
  while (i < sizeof kFtypes / sizeof kFtypes[0] && strcmp(kFtypes[i].name, type)) ++i;
  if (i == sizeof kFtypes / sizeof kFtypes[0]) die("unknown TYPE '%s' (q4_0, q8_0, q4_k_m, ...)", type);
  qp.ftype = kFtypes[i].ftype;
  qp.nthread = (int32_t)threads;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if (llama_model_quantize(in_path, out_path, &qp) != 0)
    die("llama.cpp failed to quantize %s (rerun with QK_PEER_VERBOSE=1 for its log)", in_path);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  printf("seconds %.3f\n", (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
  if (fflush(stdout) != 0) die("stdout: write error");
  return 0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: llama_peer logits MODEL.gguf TOKENS_CSV OUT.bin\n"
          "       llama_peer tokenize MODEL.gguf TEXT_FILE\n"
          "       llama_peer perplexity MODEL.gguf TEXT_FILE CTX\n"
          "       llama_peer quantize IN.gguf OUT.gguf TYPE THREADS\n");
  exit(2);
}

int main(int argc, char** argv) {
  if (argc < 2) usage();
  const char* cmd = argv[1];
  if (!getenv("QK_PEER_VERBOSE")) llama_log_set(quiet_log, NULL);
  load_backends();
  llama_backend_init();
  int rc;
  if (!strcmp(cmd, "logits") && argc == 5) rc = cmd_logits(argv[2], argv[3], argv[4]);
  else if (!strcmp(cmd, "tokenize") && argc == 4) rc = cmd_tokenize(argv[2], argv[3]);
  else if (!strcmp(cmd, "perplexity") && argc == 5) rc = cmd_perplexity(argv[2], argv[3], argv[4]);
  else if (!strcmp(cmd, "quantize") && argc == 6) rc = cmd_quantize(argv[2], argv[3], argv[4], argv[5]);
  else usage();
  llama_backend_free();
  return rc;
}
