// Op bindings: read an options object, check every tensor's dtype, rank,
// sizes and device against the others (so no kernel can read or write out of
// bounds whatever JS passes), allocate outputs, dispatch by device, and map
// the kernel's status to a typed JS error. Each op has a sync form `name(o)`
// and a Promise form `nameAsync(o)` that runs the kernel on libuv's pool.
//
// Index contents (page ids, slots, rows, lengths) are range-checked by the
// kernels themselves before they write anything; the binding checks the
// indptr arrays here because the kernels do not know their lengths.
//
// Devices. Data tensors (q, pools, k/v, scores, x ...) of one call share one
// device; outputs go there. In CUDA builds an op whose data are on cuda:N
// runs the CUDA twin (cuda/launchers.h); its i32 index tensors may be on the
// CPU or on cuda:N: the binding reads them on the host either way, the CUDA
// twins do not range-check index contents, so the device path repeats the CPU
// kernel's index checks on the host and uploads the checked arrays
// (staging.h). CPU-only builds refuse device tensors (KVSQ_UNSUPPORTED).
#include <napi.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <unordered_set>
#include <vector>

#include "bindings.h"
#include "core/device.h"
#include "core/ops.h"
#include "cpu/kernels.h"
#include "errors.h"
#include "staging.h"
#include "tensor.h"
#ifdef KVSQ_WITH_CUDA
#include "../../cuda/launchers.h"
#endif

namespace kvsq {
namespace napi {

namespace {

// ------------------------------------------------------------------ argument reading

struct Opts {
  Napi::Env env;
  Napi::Object o;
  std::string op;

  Opts(const Napi::CallbackInfo& info, const char* name) : env(info.Env()), op(name) {
    if (info.Length() < 1 || !info[0].IsObject() || info[0].IsArray())
      throw_error(env, "KVSQ_ARG", op + ": expected an options object");
    o = info[0].As<Napi::Object>();
  }
  std::string where(const char* key) const { return op + ": " + key; }
  bool has(const char* key) const {
    Napi::Value v = o.Get(key);
    return !v.IsUndefined() && !v.IsNull();
  }
  Tensor* tensor(const char* key, bool required = true) const {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined() || v.IsNull()) {
      if (required) throw_error(env, "KVSQ_ARG", where(key) + " is required (a Tensor)");
      return nullptr;
    }
    return tensor_of(v, where(key));
  }
  // One tensor value (an element of an array option, say).
  Tensor* tensor_of(Napi::Value v, const std::string& what) const {
    // Accept the TS wrapper too: it keeps the native object in .handle.
    if (v.IsObject() && !v.As<Napi::Object>().Get("handle").IsUndefined()) v = v.As<Napi::Object>().Get("handle");
    return Tensor::From(env, v, what);
  }
  double number(const char* key, double def, bool required = false) const {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined() || v.IsNull()) {
      if (required) throw_error(env, "KVSQ_ARG", where(key) + " is required (a number)");
      return def;
    }
    if (!v.IsNumber()) throw_error(env, "KVSQ_ARG", where(key) + " must be a number");
    return v.As<Napi::Number>().DoubleValue();
  }
  int32_t integer(const char* key, int32_t def, int64_t lo, int64_t hi, bool required = false) const {
    double x = number(key, double(def), required);
    if (!std::isfinite(x) || x != std::floor(x) || x < double(lo) || x > double(hi))
      throw_error(env, "KVSQ_RANGE", where(key) + " = " + std::to_string(x) + ": expected an integer in [" +
                                         std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return int32_t(x);
  }
  bool boolean(const char* key, bool def) const {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined() || v.IsNull()) return def;
    if (!v.IsBoolean()) throw_error(env, "KVSQ_ARG", where(key) + " must be a boolean");
    return v.As<Napi::Boolean>().Value();
  }
  std::string choice(const char* key, const char* def, std::initializer_list<const char*> allowed) const {
    Napi::Value v = o.Get(key);
    std::string s = def;
    if (!v.IsUndefined() && !v.IsNull()) {
      if (!v.IsString()) throw_error(env, "KVSQ_ARG", where(key) + " must be a string");
      s = v.As<Napi::String>().Utf8Value();
    }
    std::string list;
    for (const char* a : allowed) {
      if (s == a) return s;
      list += std::string(list.empty() ? "" : ", ") + a;
    }
    throw_error(env, "KVSQ_RANGE", where(key) + " = '" + s + "': expected one of " + list);
  }
};

const Storage& S(Tensor* t) { return t->storage(); }

void need_dtype(const Opts& a, Tensor* t, const char* key, std::initializer_list<DType> ok) {
  for (DType d : ok)
    if (S(t).dtype == d) return;
  std::string list;
  for (DType d : ok) list += std::string(list.empty() ? "" : ", ") + dtype_name(d);
  throw_error(a.env, "KVSQ_DTYPE", a.where(key) + " has dtype " + dtype_name(S(t).dtype) + "; expected " + list);
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

void need_rank(const Opts& a, Tensor* t, const char* key, size_t rank) {
  if (S(t).shape.size() != rank)
    throw_error(a.env, "KVSQ_SHAPE", a.where(key) + " has shape " + shape_str(S(t).shape) + "; expected " +
                                         std::to_string(rank) + " dimensions");
}

void need_shape(const Opts& a, Tensor* t, const char* key, const std::vector<int64_t>& want) {
  if (S(t).shape != want)
    throw_error(a.env, "KVSQ_SHAPE", a.where(key) + " has shape " + shape_str(S(t).shape) + "; expected " + shape_str(want));
}

void need_numel(const Opts& a, Tensor* t, const char* key, int64_t n) {
  if (S(t).numel() != n)
    throw_error(a.env, "KVSQ_SHAPE", a.where(key) + " has " + std::to_string(S(t).numel()) + " elements; expected " + std::to_string(n));
}

using Named = std::pair<const char*, Tensor*>;

// The data tensors of one op live on one device; returns it (null entries are
// absent optional arguments). Index tensors (i32 arrays the binding reads on
// the host: page tables, ids, lengths, slots, rows, selections, k) live there
// too or, in CUDA builds, on the CPU: the device path uploads them itself.
int same_device(const Opts& a, std::initializer_list<Named> data, std::initializer_list<Named> index = {}) {
  int dev = -2;
  const char* first = nullptr;
  auto mismatch = [&](const char* key, Tensor* t, const char* hint) {
    throw_error(a.env, "KVSQ_DEVICE", a.op + ": " + key + " is on " + S(t).device_name() + " but " + first + " is on " +
                                          (dev == kCpu ? std::string("cpu") : "cuda:" + std::to_string(dev)) + hint);
  };
  for (auto& [key, t] : data) {
    if (!t) continue;
    if (dev == -2) {
      dev = S(t).device;
      first = key;
    } else if (S(t).device != dev) {
      mismatch(key, t, "");
    }
  }
  for (auto& [key, t] : index) {
    if (!t || S(t).device == dev) continue;
#ifdef KVSQ_WITH_CUDA
    if (S(t).device == kCpu) continue;
    mismatch(key, t, " (index tensors may be on the cpu or on the data's device)");
#else
    mismatch(key, t, "");
#endif
  }
  return dev == -2 ? kCpu : dev;
}

// An indptr array (i32; `p` its host-readable values, see host_i32) must
// start at >= 0, never decrease, and end within the array it indexes.
void check_indptr(const Opts& a, Tensor* t, const int32_t* p, const char* key, int64_t entries, int64_t target_len) {
  need_numel(a, t, key, entries + 1);
  if (p[0] < 0) throw_error(a.env, "KVSQ_RANGE", a.where(key) + "[0] is negative");
  for (int64_t i = 0; i < entries; ++i)
    if (p[i + 1] < p[i]) throw_error(a.env, "KVSQ_RANGE", a.where(key) + " decreases at " + std::to_string(i + 1));
  if (p[entries] > target_len)
    throw_error(a.env, "KVSQ_RANGE", a.where(key) + " ends at " + std::to_string(p[entries]) + " but the indexed array has " +
                                         std::to_string(target_len) + " entries");
}

// Each list's length within what its pages hold (KVSQ_RANGE otherwise).
void check_lengths(const Opts& a, const int32_t* indptr, const int32_t* len, int64_t lists, int64_t page_size) {
  for (int64_t l = 0; l < lists; ++l) {
    const int64_t cap = (int64_t(indptr[l + 1]) - indptr[l]) * page_size;
    if (len[l] < 0 || len[l] > cap)
      throw_error(a.env, "KVSQ_RANGE", a.op + ": kvLen[" + std::to_string(l) + "] = " + std::to_string(len[l]) +
                                           " is outside [0, " + std::to_string(cap) + "] (the slots of its pages)");
  }
}

// The lists' total length (the size of flat per-slot arrays), after
// check_lengths: sizes come from checked lengths only.
int64_t checked_total(const Opts& a, const int32_t* indptr, const int32_t* len, int64_t lists, int64_t page_size) {
  check_lengths(a, indptr, len, lists, page_size);
  int64_t total = 0;
  for (int64_t l = 0; l < lists; ++l) total += len[l];
  return total;
}

// A flat per-slot array the caller passes in (possibly a reused, larger
// buffer): it must hold at least the lists' total.
void need_at_least(const Opts& a, Tensor* t, const std::string& name, int64_t total) {
  if (S(t).numel() < total)
    throw_error(a.env, "KVSQ_SHAPE", a.op + ": " + name + " holds " + std::to_string(S(t).numel()) + " values; the lists hold " + std::to_string(total));
}

// ------------------------------------------------------------------ jobs

// One op invocation, parsed and checked on the JS thread, runnable on any thread.
struct Job {
  std::string what;
  int device = kCpu;                   // of the data tensors and the outputs
  std::unique_ptr<Staging> staging;    // device path: index arrays (host copies, device buffer)
  std::vector<Tensor*> inputs;           // pinned while an async run is in flight
  std::vector<Napi::ObjectReference> refs;
  std::vector<Storage> outputs;          // allocated up front, wrapped on success
  std::function<Status()> run;
  // Builds the JS result from the wrapped outputs (same order as `outputs`).
  std::function<Napi::Value(Napi::Env, std::vector<Napi::Object>&)> result;
  std::vector<std::vector<uint8_t>> scratch;  // host-side converted arguments

  // Outputs not handed to JS (a parse that threw after allocating, a failed
  // run) are freed here; then `staging` frees its device buffer.
  ~Job() { free_outputs(); }

  void use(Tensor* t) {
    if (t) inputs.push_back(t);
  }
  Staging& stage() {
    if (!staging) staging = std::make_unique<Staging>(device);
    return *staging;
  }
  // Output storage on `device`; index into outputs.
  size_t output(Napi::Env env, DType dt, std::vector<int64_t> shape, int device) {
    Storage s;
    s.dtype = dt;
    s.shape = std::move(shape);
    s.device = device;
    s.nbytes = size_t(s.numel()) * dtype_size(dt);
    Status st = storage_alloc(s);
    if (st != Status::Ok) {
      free_outputs();
      throw_status(env, st, what + ": output allocation of " + std::to_string(s.nbytes) + " bytes");
    }
    outputs.push_back(std::move(s));
    return outputs.size() - 1;
  }
  void* out_ptr(size_t i) { return outputs[i].data; }
  void free_outputs() {
    for (Storage& s : outputs) storage_free(s);
    outputs.clear();
  }
  Napi::Value finish(Napi::Env env) {
    std::vector<Napi::Object> wrapped;
    for (Storage& s : outputs) {
      wrapped.push_back(Tensor::Wrap(env, std::move(s)));
      s.data = nullptr;
    }
    outputs.clear();
    return result ? result(env, wrapped) : env.Undefined();
  }
};

using Parser = std::unique_ptr<Job> (*)(const Napi::CallbackInfo&);

Napi::Value run_sync(const Napi::CallbackInfo& info, Parser parse) {
  std::unique_ptr<Job> job = parse(info);
  Status st = job->run();
  if (st != Status::Ok) {
    // The message first: it quotes last_cuda_error(), which freeing device
    // outputs could overwrite.
    std::string msg = status_message(st, job->what);
    job->free_outputs();
    throw_error(info.Env(), status_code(st), msg);
  }
  return job->finish(info.Env());
}

class OpWorker : public Napi::AsyncWorker {
 public:
  OpWorker(Napi::Env env, std::unique_ptr<Job> job)
      : Napi::AsyncWorker(env, "kvsqueeze.op"), job_(std::move(job)), deferred_(Napi::Promise::Deferred::New(env)) {
    for (Tensor* t : job_->inputs) {
      t->pin();
      job_->refs.push_back(Napi::Persistent(t->Value()));
    }
  }
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  // The message is built here, on the worker thread: last_cuda_error() is
  // per thread, and OnOK runs on the JS thread.
  void Execute() override {
    status_ = job_->run();
    if (status_ != Status::Ok) message_ = status_message(status_, job_->what);
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    unpin(env);
    if (status_ != Status::Ok) {
      job_->free_outputs();
      deferred_.Reject(make_error(env, status_code(status_), message_).Value());
      return;
    }
    try {
      deferred_.Resolve(job_->finish(env));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override {
    unpin(Env());
    job_->free_outputs();
    deferred_.Reject(e.Value());
  }

 private:
  void unpin(Napi::Env env) {
    for (Tensor* t : job_->inputs) t->unpin(env);
    job_->inputs.clear();
    job_->refs.clear();
  }
  std::unique_ptr<Job> job_;
  Napi::Promise::Deferred deferred_;
  Status status_ = Status::Ok;
  std::string message_;
};

Napi::Value run_async(const Napi::CallbackInfo& info, Parser parse) {
  std::unique_ptr<Job> job = parse(info);
  OpWorker* w = new OpWorker(info.Env(), std::move(job));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// A build without CUDA has no device kernels: a device tensor gets
// KVSQ_UNSUPPORTED naming the op. (Such a build cannot create device tensors,
// so this is a guard.) CUDA builds run every op's CUDA twin.
void need_kernels_for(const Opts& a, int device) {
#ifndef KVSQ_WITH_CUDA
  if (device != kCpu)
    throw_error(a.env, "KVSQ_UNSUPPORTED", a.op + ": the CUDA kernel is not in this build yet; move the tensors to 'cpu'");
#endif
}

// A new job for an op whose data tensors are on `device`.
std::unique_ptr<Job> new_job(const Opts& a, int device) {
  auto job = std::make_unique<Job>();
  job->what = a.op;
  job->device = device;
  return job;
}

// Host-readable values of an i32 index tensor (dtype already checked; null
// for an absent one): a CPU tensor's own buffer, as before; a device
// tensor's values downloaded into the job's staging, where the device path
// validates and uploads them again.
const int32_t* host_i32(const Opts& a, Job& job, Tensor* t) {
  if (!t) return nullptr;
  if (S(t).device == kCpu) return static_cast<const int32_t*>(S(t).data);
  const int32_t* p = nullptr;
  Status st = job.stage().download_i32(S(t).data, S(t).numel(), &p);
  if (st != Status::Ok) throw_status(a.env, st, a.op + ": reading an index tensor from " + S(t).device_name());
  return p;
}

#ifdef KVSQ_WITH_CUDA
// The device half of a run, after the host index checks passed: upload the
// staged index arrays (the device layer selects the job's device in each of
// its calls; with nothing staged, device_select makes it current, so a launch
// on an async worker thread goes to the right device), then launch on the
// legacy default stream (nullptr). Nothing waits for the device here: the
// outputs are stream-ordered after the kernels, the next op's kernels after
// those, and reading a tensor on the host waits for them (core/device.h), so
// a decode step synchronises only where data comes back to JavaScript. A
// kernel fault therefore surfaces at that read (KVSQ_CUDA; sticky faults
// poison the device for every later call). Launch errors surface here.
template <class Launch>
Status on_device(Job* j, Launch&& launch) {
  Status s = j->staging && !j->staging->empty() ? j->staging->upload() : device_select(j->device);
  if (s != Status::Ok) return s;
  return launch();
}
size_t i32_bytes(Tensor* t) { return size_t(S(t).numel()) * sizeof(int32_t); }
#endif

Reduce parse_reduce(const Opts& a) {
  std::string r = a.choice("reduce", "mean", {"mean", "sum", "max"});
  return r == "sum" ? Reduce::Sum : r == "max" ? Reduce::Max : Reduce::Mean;
}

std::vector<int64_t> widen(Tensor* t, const int32_t* p) { return std::vector<int64_t>(p, p + S(t).numel()); }

constexpr int64_t kMaxI32 = 0x7fffffff;

// ------------------------------------------------------------------ ops

// The per-list page counts of a batch's lists (ceil(kv_len / P); -1 for a
// negative length, which the checks reject later anyway).
std::vector<int64_t> list_pages(const int32_t* len, int64_t lists, int64_t P) {
  std::vector<int64_t> n(static_cast<size_t>(lists));
  for (int64_t l = 0; l < lists; ++l) n[l] = len[l] < 0 ? -1 : (int64_t(len[l]) + P - 1) / P;
  return n;
}

// True when selIndptr / selPages are the untouched outputs of one questSelect
// call for exactly these lists (same batch, heads, page size and page counts):
// then every row is ascending and inside its list, as decode attention requires,
// and a device selection need not be read back to be checked.
bool selection_fits(const Storage& ind, const Storage& pages, int64_t B, int64_t Hq, int64_t Hkv, int64_t P, const int32_t* len) {
  const SelectionTag* t = ind.selection.get();
  if (!t || ind.selection != pages.selection) return false;
  if (t->batch != B || t->q_heads != Hq || t->kv_heads != Hkv || t->page_size != P) return false;
  return t->pages == list_pages(len, B * Hkv, P);
}

std::unique_ptr<Job> parse_decode_attention(const Napi::CallbackInfo& info) {
  Opts a(info, "decodeAttention");
  Tensor* q = a.tensor("q");
  Tensor* kp = a.tensor("kPool");
  Tensor* vp = a.tensor("vPool");
  Tensor* indptr = a.tensor("pageIndptr");
  Tensor* ids = a.tensor("pageIds");
  Tensor* len = a.tensor("kvLen");
  Tensor* sel_indptr = a.tensor("selIndptr", false);
  Tensor* sel_pages = a.tensor("selPages", false);
  Tensor* score = a.tensor("scorePool", false);
  Tensor* before = a.tensor("scoresBefore", false);
  Tensor* after = a.tensor("scoresAfter", false);
  Tensor* epos = a.tensor("evictPositions", false);
  Tensor* emax = a.tensor("evictMaxPos", false);
  int dev = same_device(a, {{"q", q}, {"kPool", kp}, {"vPool", vp}, {"scorePool", score}, {"scoresBefore", before}, {"scoresAfter", after}},
                        {{"pageIndptr", indptr}, {"pageIds", ids}, {"kvLen", len}, {"selIndptr", sel_indptr}, {"selPages", sel_pages},
                         {"evictPositions", epos}, {"evictMaxPos", emax}});
  need_kernels_for(a, dev);
  auto job = new_job(a, dev);
  need_dtype(a, q, "q", {DType::F32, DType::F16, DType::BF16});
  need_dtype(a, kp, "kPool", {DType::F32, DType::F16, DType::BF16});
  need_rank(a, q, "q", 3);
  need_rank(a, kp, "kPool", 3);
  const int64_t B = S(q).shape[0], Hq = S(q).shape[1], D = S(q).shape[2];
  const int64_t N = S(kp).shape[0], P = S(kp).shape[1];
  if (S(kp).shape[2] != D) throw_error(a.env, "KVSQ_SHAPE", a.op + ": kPool rows have " + std::to_string(S(kp).shape[2]) + " elements but q has head dim " + std::to_string(D));
  if (S(vp).dtype != S(kp).dtype) throw_error(a.env, "KVSQ_DTYPE", a.op + ": vPool dtype differs from kPool");
  need_shape(a, vp, "vPool", S(kp).shape);
  const int32_t Hkv = a.integer("numKvHeads", 0, 1, kMaxI32, true);
  if (Hq % Hkv) throw_error(a.env, "KVSQ_SHAPE", a.op + ": q has " + std::to_string(Hq) + " heads, not a multiple of numKvHeads " + std::to_string(Hkv));
  for (auto [k, t] : {std::pair{"pageIndptr", indptr}, {"pageIds", ids}, {"kvLen", len}, {"selIndptr", sel_indptr}, {"selPages", sel_pages}})
    if (t) need_dtype(a, t, k, {DType::I32});
  const int32_t* h_indptr = host_i32(a, *job, indptr);
  const int32_t* h_ids = host_i32(a, *job, ids);
  const int32_t* h_len = host_i32(a, *job, len);
  need_numel(a, len, "kvLen", B * Hkv);
  if (bool(sel_indptr) != bool(sel_pages)) throw_error(a.env, "KVSQ_ARG", a.op + ": selIndptr and selPages go together");
  // A device selection made by questSelect for these very lists stays on the
  // device (no read-back): it is valid by construction. Anything else is read
  // and checked on the host, as on the CPU.
  const bool sel_on_device = sel_indptr && dev != kCpu && S(sel_indptr).device == dev && S(sel_pages).device == dev &&
                             selection_fits(S(sel_indptr), S(sel_pages), B, Hq, Hkv, P, h_len);
  const int32_t* h_sel_indptr = sel_on_device ? nullptr : host_i32(a, *job, sel_indptr);
  const int32_t* h_sel_pages = sel_on_device ? nullptr : host_i32(a, *job, sel_pages);
  check_indptr(a, indptr, h_indptr, "pageIndptr", B * Hkv, S(ids).numel());
  if (sel_indptr && !sel_on_device) check_indptr(a, sel_indptr, h_sel_indptr, "selIndptr", B * Hq, S(sel_pages).numel());
  if (score) {
    need_dtype(a, score, "scorePool", {DType::F32});
    need_shape(a, score, "scorePool", {N, P});
  }
  const bool want_lse = a.boolean("lse", false);
  const double scale = a.number("scale", 1.0 / std::sqrt(double(D)));
  if (!std::isfinite(scale)) throw_error(a.env, "KVSQ_RANGE", a.op + ": scale must be finite");
  // scoresBefore / scoresAfter: caller-owned f32 destinations for the score
  // pool rows of every list before and after the add, flat (readScores'
  // layout): the cache's undo record and eviction view. Caller-owned so a
  // decode step allocates nothing (fresh outputs cost more than the copies).
  // evictPositions + evictMaxPos: each list's eviction candidate after the
  // add (the lowest score among slots at positions <= its max), returned as
  // evictSlots, so a policy with that rule needs no scores on the host.
  const bool want_evict = epos || emax;
  if (want_evict && (!epos || !emax)) throw_error(a.env, "KVSQ_ARG", a.op + ": evictPositions and evictMaxPos go together");
  // The flat per-slot arrays (all sized by the lists' total length).
  int64_t total = -1;
  for (auto [k, t, dt] : {std::tuple{"scoresBefore", before, DType::F32}, {"scoresAfter", after, DType::F32}, {"evictPositions", epos, DType::I32}}) {
    if (!t) continue;
    if (!score) throw_error(a.env, "KVSQ_ARG", a.op + ": " + k + " needs scorePool");
    need_dtype(a, t, k, {dt});
    if (total < 0) total = checked_total(a, h_indptr, h_len, B * Hkv, P);
    need_at_least(a, t, k, total);
  }
  const int32_t *h_epos = nullptr, *h_emax = nullptr;
  if (want_evict) {
    need_dtype(a, emax, "evictMaxPos", {DType::I32});
    need_numel(a, emax, "evictMaxPos", B * Hkv);
    h_epos = host_i32(a, *job, epos);
    h_emax = host_i32(a, *job, emax);
  }

  for (Tensor* t : {q, kp, vp, indptr, ids, len, sel_indptr, sel_pages, score, before, after, epos, emax}) job->use(t);
  size_t o_i = job->output(a.env, S(q).dtype, {B, Hq, D}, dev);
  size_t lse_i = want_lse ? job->output(a.env, DType::F32, {B, Hq}, dev) : 0;
  size_t evict_i = want_evict ? job->output(a.env, DType::I32, {B * Hkv}, dev) : 0;
  DecodeAttnArgs args;
  args.batch = int32_t(B);
  args.num_q_heads = int32_t(Hq);
  args.num_kv_heads = Hkv;
  args.head_dim = int32_t(D);
  args.page_size = int32_t(P);
  args.q_dtype = S(q).dtype;
  args.kv_dtype = S(kp).dtype;
  args.scale = float(scale);
  args.q = S(q).data;
  args.k_pool = S(kp).data;
  args.v_pool = S(vp).data;
  args.num_pages = N;
  args.page_indptr = h_indptr;
  args.page_ids = h_ids;
  args.kv_len = h_len;
  args.sel_indptr = h_sel_indptr;
  args.sel_pages = h_sel_pages;
  args.sel_count = sel_pages ? S(sel_pages).numel() : 0;
  args.score_pool = score ? static_cast<float*>(S(score).data) : nullptr;
  args.reduce = parse_reduce(a);
  args.score_before = before ? static_cast<float*>(S(before).data) : nullptr;
  args.score_after = after ? static_cast<float*>(S(after).data) : nullptr;
  args.evict_pos = h_epos;
  args.evict_max_pos = h_emax;
  Job* j = job.get();
  // Output pointers are known only once the job allocated them.
  auto bind_outputs = [j, o_i, lse_i, want_lse, evict_i, want_evict](DecodeAttnArgs& x) {
    x.o = j->out_ptr(o_i);
    x.lse = want_lse ? static_cast<float*>(j->out_ptr(lse_i)) : nullptr;
    x.evict_slot = want_evict ? static_cast<int32_t*>(j->out_ptr(evict_i)) : nullptr;
  };
  job->run = [args, bind_outputs]() mutable {
    bind_outputs(args);
    return cpu_decode_attention(args);
  };
#ifdef KVSQ_WITH_CUDA
  if (dev != kCpu) {
    Staging& st = job->stage();
    const size_t s_indptr = st.add(h_indptr, i32_bytes(indptr)), s_ids = st.add(h_ids, i32_bytes(ids)),
                 s_len = st.add(h_len, i32_bytes(len));
    const bool stage_sel = sel_indptr && !sel_on_device;
    const size_t s_sel_indptr = stage_sel ? st.add(h_sel_indptr, i32_bytes(sel_indptr)) : 0;
    const size_t s_sel_pages = stage_sel ? st.add(h_sel_pages, i32_bytes(sel_pages)) : 0;
    const int32_t* d_sel_indptr = sel_on_device ? static_cast<const int32_t*>(S(sel_indptr).data) : nullptr;
    const int32_t* d_sel_pages = sel_on_device ? static_cast<const int32_t*>(S(sel_pages).data) : nullptr;
    const size_t s_epos = want_evict ? st.add(h_epos, i32_bytes(epos)) : 0, s_emax = want_evict ? st.add(h_emax, i32_bytes(emax)) : 0;
    const bool dense = !sel_indptr;
    job->run = [j, args, bind_outputs, s_indptr, s_ids, s_len, s_sel_indptr, s_sel_pages, stage_sel, d_sel_indptr, d_sel_pages,
                s_epos, s_emax, want_evict, dense]() mutable {
      bind_outputs(args);
      // host index pointers (a device-resident selection is valid by construction: not read here)
      if (Status s = validate_decode_attention(args); s != Status::Ok) return s;
      // A dense call's work plan, made here from the validated host lengths
      // and uploaded with the index arrays: the device runs no plan kernel.
      // (Made on the job's device: it sizes the plan to that device's SMs.)
      DecodePlan plan;
      size_t s_plan = 0;
      if (dense) {
        if (Status s = device_select(j->device); s != Status::Ok) return s;
        if (Status s = cuda_decode_plan(args, &plan); s != Status::Ok) return s;
        if (!plan.image.empty()) s_plan = j->staging->add(plan.image.data(), plan.image.size());
      }
      return on_device(j, [&] {
        const Staging& sg = *j->staging;
        if (!plan.image.empty()) {  // written by the call (its counters): the job's own copy
          args.plan = const_cast<uint8_t*>(sg.dev<uint8_t>(s_plan));
          args.plan_items = plan.items;
          args.plan_lists = plan.lists;
        }
        args.page_indptr = sg.dev<int32_t>(s_indptr);
        args.page_ids = sg.dev<int32_t>(s_ids);
        args.kv_len = sg.dev<int32_t>(s_len);
        args.sel_indptr = stage_sel ? sg.dev<int32_t>(s_sel_indptr) : d_sel_indptr;
        args.sel_pages = stage_sel ? sg.dev<int32_t>(s_sel_pages) : d_sel_pages;
        args.evict_pos = want_evict ? sg.dev<int32_t>(s_epos) : nullptr;
        args.evict_max_pos = want_evict ? sg.dev<int32_t>(s_emax) : nullptr;
        return cuda_decode_attention(args, nullptr);
      });
    };
  }
#endif
  job->result = [want_lse, lse_i, want_evict, evict_i](Napi::Env env, std::vector<Napi::Object>& outs) -> Napi::Value {
    Napi::Object r = Napi::Object::New(env);
    r.Set("o", outs[0]);
    if (want_lse) r.Set("lse", outs[lse_i]);
    if (want_evict) r.Set("evictSlots", outs[evict_i]);
    return r;
  };
  return job;
}

std::unique_ptr<Job> parse_window_scores(const Napi::CallbackInfo& info) {
  Opts a(info, "windowScores");
  Tensor* q = a.tensor("q");
  Tensor* k = a.tensor("k");
  int dev = same_device(a, {{"q", q}, {"k", k}});
  need_kernels_for(a, dev);
  auto job = new_job(a, dev);
  need_dtype(a, q, "q", {DType::F32, DType::F16, DType::BF16});
  if (S(k).dtype != S(q).dtype) throw_error(a.env, "KVSQ_DTYPE", a.op + ": k and q must share a dtype");
  need_rank(a, q, "q", 3);
  need_rank(a, k, "k", 3);
  const int64_t Hq = S(q).shape[0], rows = S(q).shape[1], D = S(q).shape[2];
  const int64_t Hkv = S(k).shape[0], L = S(k).shape[1];
  if (S(k).shape[2] != D) throw_error(a.env, "KVSQ_SHAPE", a.op + ": k head dim differs from q's");
  if (Hkv == 0 || Hq % Hkv) throw_error(a.env, "KVSQ_SHAPE", a.op + ": q heads must be a multiple of k heads");
  const int32_t w = a.integer("window", int32_t(std::min<int64_t>(rows, L)), 1, std::min<int64_t>(rows, L));
  const double scale = a.number("scale", 1.0 / std::sqrt(double(D)));
  if (!std::isfinite(scale)) throw_error(a.env, "KVSQ_RANGE", a.op + ": scale must be finite");
  job->use(q);
  job->use(k);
  size_t out_i = job->output(a.env, DType::F32, {Hkv, L}, dev);
  WindowScoresArgs args;
  args.num_q_heads = int32_t(Hq);
  args.num_kv_heads = int32_t(Hkv);
  args.head_dim = int32_t(D);
  args.seq_len = int32_t(L);
  args.window = w;
  args.q_rows = int32_t(rows);
  args.dtype = S(q).dtype;
  args.scale = float(scale);
  args.q = S(q).data;
  args.k = S(k).data;
  args.reduce = parse_reduce(a);
  Job* j = job.get();
  job->run = [j, args, out_i]() mutable {
    args.out = static_cast<float*>(j->out_ptr(out_i));
    return cpu_window_scores(args);
  };
#ifdef KVSQ_WITH_CUDA
  if (dev != kCpu)
    job->run = [j, args, out_i]() mutable {
      args.out = static_cast<float*>(j->out_ptr(out_i));
      return on_device(j, [&] { return cuda_window_scores(args, nullptr); });
    };
#endif
  job->result = [](Napi::Env, std::vector<Napi::Object>& outs) -> Napi::Value { return outs[0]; };
  return job;
}

// Rows view of a 1-D or 2-D f32 tensor.
void rows_of(const Opts& a, Tensor* x, const char* key, int64_t& rows, int64_t& stride) {
  need_dtype(a, x, key, {DType::F32});
  if (S(x).shape.size() == 1) {
    rows = 1;
    stride = S(x).shape[0];
  } else if (S(x).shape.size() == 2) {
    rows = S(x).shape[0];
    stride = S(x).shape[1];
  } else {
    throw_error(a.env, "KVSQ_SHAPE", a.where(key) + " must be 1-D or 2-D [rows, length]");
  }
}

std::unique_ptr<Job> parse_pool1d(const Napi::CallbackInfo& info) {
  Opts a(info, "pool1d");
  Tensor* x = a.tensor("x");
  int dev = same_device(a, {{"x", x}});
  need_kernels_for(a, dev);
  auto job = new_job(a, dev);
  int64_t rows, stride;
  rows_of(a, x, "x", rows, stride);
  const int32_t n = a.integer("n", int32_t(stride), 0, stride);
  const int32_t kernel = a.integer("kernel", 7, 1, 1 << 20);
  if (kernel % 2 == 0) throw_error(a.env, "KVSQ_RANGE", a.op + ": kernel must be odd");
  const std::string mode = a.choice("mode", "max", {"max", "avg"});
  job->use(x);
  std::vector<int64_t> shape = S(x).shape.size() == 1 ? std::vector<int64_t>{n} : std::vector<int64_t>{rows, n};
  size_t out_i = job->output(a.env, DType::F32, shape, dev);
  Pool1dArgs args;
  args.rows = int32_t(rows);
  args.n = n;
  args.in_stride = stride;
  args.kernel = kernel;
  args.mode = mode == "avg" ? PoolMode::Avg : PoolMode::Max;
  args.in = static_cast<const float*>(S(x).data);
  Job* j = job.get();
  job->run = [j, args, out_i]() mutable {
    if (args.rows == 0 || args.n == 0) return Status::Ok;
    args.out = static_cast<float*>(j->out_ptr(out_i));
    return cpu_pool1d(args);
  };
#ifdef KVSQ_WITH_CUDA
  if (dev != kCpu)
    job->run = [j, args, out_i]() mutable {
      if (args.rows == 0 || args.n == 0) return Status::Ok;
      args.out = static_cast<float*>(j->out_ptr(out_i));
      return on_device(j, [&] { return cuda_pool1d(args, nullptr); });
    };
#endif
  job->result = [](Napi::Env, std::vector<Napi::Object>& outs) -> Napi::Value { return outs[0]; };
  return job;
}

std::unique_ptr<Job> parse_chunk_scores(const Napi::CallbackInfo& info) {
  Opts a(info, "chunkScores");
  Tensor* x = a.tensor("x");
  int dev = same_device(a, {{"x", x}});
  need_kernels_for(a, dev);
  auto job = new_job(a, dev);
  int64_t rows, stride;
  rows_of(a, x, "x", rows, stride);
  const int32_t n = a.integer("n", int32_t(stride), 0, stride);
  const int32_t chunk = a.integer("chunk", 10, 1, kMaxI32);
  const int64_t nchunks = (int64_t(n) + chunk - 1) / chunk;
  job->use(x);
  size_t out_i = job->output(a.env, DType::F32, {nchunks}, dev);
  ChunkScoresArgs args;
  args.rows = int32_t(rows);
  args.n = n;
  args.in_stride = stride;
  args.chunk = chunk;
  args.in = static_cast<const float*>(S(x).data);
  Job* j = job.get();
  job->run = [j, args, out_i]() mutable {
    if (args.rows == 0 || args.n == 0) return Status::Ok;
    args.out = static_cast<float*>(j->out_ptr(out_i));
    return cpu_chunk_scores(args);
  };
#ifdef KVSQ_WITH_CUDA
  if (dev != kCpu)
    job->run = [j, args, out_i]() mutable {
      if (args.rows == 0 || args.n == 0) return Status::Ok;
      args.out = static_cast<float*>(j->out_ptr(out_i));
      return on_device(j, [&] { return cuda_chunk_scores(args, nullptr); });
    };
#endif
  job->result = [](Napi::Env, std::vector<Napi::Object>& outs) -> Napi::Value { return outs[0]; };
  return job;
}

std::unique_ptr<Job> parse_topk(const Napi::CallbackInfo& info) {
  Opts a(info, "topk");
  Tensor* x = a.tensor("scores");
  Tensor* lengths = a.tensor("lengths", false);
  Tensor* kt = nullptr;
  Napi::Value kv = a.o.Get("k");
  int32_t kscalar = -1;
  if (kv.IsNumber()) kscalar = a.integer("k", 0, 0, kMaxI32, true);
  else kt = a.tensor("k");
  int dev = same_device(a, {{"scores", x}}, {{"lengths", lengths}, {"k", kt}});
  need_kernels_for(a, dev);
  auto job = new_job(a, dev);
  int64_t rows, stride;
  rows_of(a, x, "scores", rows, stride);
  if (lengths) {
    need_dtype(a, lengths, "lengths", {DType::I32});
    need_numel(a, lengths, "lengths", rows);
  }
  if (kt) {
    need_dtype(a, kt, "k", {DType::I32});
    need_numel(a, kt, "k", rows);
  }
  job->use(x);
  job->use(lengths);
  job->use(kt);
  const int32_t* h_lengths = host_i32(a, *job, lengths);
  const int32_t* h_k = host_i32(a, *job, kt);
  // Per-row k as a host array (scalar k broadcast); the output width is the
  // largest count any row can produce, so no row is cut short.
  std::vector<int32_t> kvec(size_t(rows), kscalar);
  if (kt) std::copy(h_k, h_k + rows, kvec.begin());
  int64_t width = 0;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t len = lengths ? h_lengths[r] : stride;
    if (kvec[r] < 0) throw_error(a.env, "KVSQ_RANGE", a.op + ": k[" + std::to_string(r) + "] is negative");
    if (len < 0 || len > stride) throw_error(a.env, "KVSQ_RANGE", a.op + ": lengths[" + std::to_string(r) + "] = " + std::to_string(len) + " is outside [0, " + std::to_string(stride) + "]");
    width = std::max<int64_t>(width, std::min<int64_t>(kvec[r], len));
  }
  const bool one_row = S(x).shape.size() == 1;
  size_t idx_i = job->output(a.env, DType::I32, one_row ? std::vector<int64_t>{width} : std::vector<int64_t>{rows, width}, dev);
  size_t cnt_i = job->output(a.env, DType::I32, {rows}, dev);
  job->scratch.emplace_back(reinterpret_cast<uint8_t*>(kvec.data()), reinterpret_cast<uint8_t*>(kvec.data() + rows));
  TopkArgs args;
  args.rows = int32_t(rows);
  args.row_stride = stride;
  args.scores = static_cast<const float*>(S(x).data);
  args.lengths = h_lengths;
  args.out_stride = int32_t(width);
  Job* j = job.get();
  job->run = [j, args, idx_i, cnt_i]() mutable {
    if (args.rows == 0) return Status::Ok;
    args.k = reinterpret_cast<const int32_t*>(j->scratch[0].data());
    args.out = static_cast<int32_t*>(j->out_ptr(idx_i));
    args.count = static_cast<int32_t*>(j->out_ptr(cnt_i));
    if (args.out_stride == 0) {
      // Nothing to select in any row: counts are zero (already zeroed), but
      // the scan for NaN still applies.
      static int32_t dummy;
      args.out = &dummy;
    }
    return cpu_topk(args);
  };
#ifdef KVSQ_WITH_CUDA
  if (dev != kCpu) {
    // k and lengths were range-checked above (the CUDA twin checks them again
    // on the device); out may be null when width is 0 (no dummy: a host
    // address would be wrong here, and the twin writes no index then).
    Staging& st = job->stage();
    const size_t s_k = st.add(job->scratch[0].data(), job->scratch[0].size());
    const size_t s_len = lengths ? st.add(h_lengths, i32_bytes(lengths)) : 0;
    const bool has_len = lengths != nullptr;
    job->run = [j, args, idx_i, cnt_i, s_k, s_len, has_len]() mutable {
      if (args.rows == 0) return Status::Ok;
      args.out = static_cast<int32_t*>(j->out_ptr(idx_i));
      args.count = static_cast<int32_t*>(j->out_ptr(cnt_i));
      return on_device(j, [&] {
        args.k = j->staging->dev<int32_t>(s_k);
        args.lengths = has_len ? j->staging->dev<int32_t>(s_len) : nullptr;
        return cuda_topk(args, nullptr);
      });
    };
  }
#endif
  job->result = [](Napi::Env env, std::vector<Napi::Object>& outs) -> Napi::Value {
    Napi::Object r = Napi::Object::New(env);
    r.Set("indices", outs[0]);
    r.Set("counts", outs[1]);
    return r;
  };
  return job;
}

// The inputs questBounds and questSelect share: q, the metadata pool, the
// page tables (on the host, checked), the head counts and share.
struct QuestInputs {
  Tensor *q = nullptr, *meta = nullptr, *indptr = nullptr, *ids = nullptr, *len = nullptr;
  QuestBoundsArgs args;     // host index pointers; out / out_stride unset
  int64_t max_pages = 0;    // max over lists of ceil(kv_len / P)
  int dev = kCpu;
};

QuestInputs parse_quest_inputs(Opts& a, std::unique_ptr<Job>& job) {
  QuestInputs in;
  in.q = a.tensor("q");
  in.meta = a.tensor("metaPool");
  in.indptr = a.tensor("pageIndptr");
  in.ids = a.tensor("pageIds");
  in.len = a.tensor("kvLen");
  Tensor *q = in.q, *meta = in.meta;
  in.dev = same_device(a, {{"q", q}, {"metaPool", meta}}, {{"pageIndptr", in.indptr}, {"pageIds", in.ids}, {"kvLen", in.len}});
  need_kernels_for(a, in.dev);
  job = new_job(a, in.dev);
  need_dtype(a, q, "q", {DType::F32, DType::F16, DType::BF16});
  need_dtype(a, meta, "metaPool", {DType::F32, DType::F16, DType::BF16});
  need_rank(a, q, "q", 3);
  need_rank(a, meta, "metaPool", 3);
  const int64_t B = S(q).shape[0], Hq = S(q).shape[1], D = S(q).shape[2];
  const int64_t N = S(meta).shape[0];
  if (S(meta).shape[1] != 2 || S(meta).shape[2] != D)
    throw_error(a.env, "KVSQ_SHAPE", a.op + ": metaPool must be [pages, 2, " + std::to_string(D) + "], got " + shape_str(S(meta).shape));
  const int32_t Hkv = a.integer("numKvHeads", 0, 1, kMaxI32, true);
  const int32_t P = a.integer("pageSize", 16, 1, 1 << 20);
  if (Hq % Hkv) throw_error(a.env, "KVSQ_SHAPE", a.op + ": q heads must be a multiple of numKvHeads");
  for (auto [k, t] : {std::pair{"pageIndptr", in.indptr}, {"pageIds", in.ids}, {"kvLen", in.len}}) need_dtype(a, t, k, {DType::I32});
  const int32_t* h_indptr = host_i32(a, *job, in.indptr);
  const int32_t* h_ids = host_i32(a, *job, in.ids);
  const int32_t* h_len = host_i32(a, *job, in.len);
  need_numel(a, in.len, "kvLen", B * Hkv);
  check_indptr(a, in.indptr, h_indptr, "pageIndptr", B * Hkv, S(in.ids).numel());
  // Output sizes come from the lengths: check them against their lists'
  // pages before sizing anything (a huge length would otherwise allocate first).
  check_lengths(a, h_indptr, h_len, B * Hkv, P);
  for (int64_t l = 0; l < B * Hkv; ++l) in.max_pages = std::max<int64_t>(in.max_pages, (int64_t(h_len[l]) + P - 1) / P);
  for (Tensor* t : {q, meta, in.indptr, in.ids, in.len}) job->use(t);
  QuestBoundsArgs& args = in.args;
  args.batch = int32_t(B);
  args.num_q_heads = int32_t(Hq);
  args.num_kv_heads = Hkv;
  args.head_dim = int32_t(D);
  args.page_size = P;
  args.q_dtype = S(q).dtype;
  args.kv_dtype = S(meta).dtype;
  args.q = S(q).data;
  args.meta_pool = S(meta).data;
  args.num_pages = N;
  args.page_indptr = h_indptr;
  args.page_ids = h_ids;
  args.kv_len = h_len;
  args.share = a.boolean("share", false);
  return in;
}

#ifdef KVSQ_WITH_CUDA
// Stages the page tables of a Quest op for the device; `bind` points the
// args' index pointers at the uploaded copies inside the job's run.
struct QuestStaged {
  size_t indptr = 0, ids = 0, len = 0;
  void bind(const Staging& sg, QuestBoundsArgs& x) const {
    x.page_indptr = sg.dev<int32_t>(indptr);
    x.page_ids = sg.dev<int32_t>(ids);
    x.kv_len = sg.dev<int32_t>(len);
  }
};
QuestStaged stage_quest(Job& job, const QuestInputs& in) {
  Staging& st = job.stage();
  QuestStaged s;
  s.indptr = st.add(in.args.page_indptr, i32_bytes(in.indptr));
  s.ids = st.add(in.args.page_ids, i32_bytes(in.ids));
  s.len = st.add(in.args.kv_len, i32_bytes(in.len));
  return s;
}
#endif

std::unique_ptr<Job> parse_quest_bounds(const Napi::CallbackInfo& info) {
  Opts a(info, "questBounds");
  std::unique_ptr<Job> job;
  QuestInputs in = parse_quest_inputs(a, job);
  const int64_t width = std::max<int64_t>(1, in.max_pages - 1);
  const QuestBoundsArgs& qa = in.args;
  size_t out_i = job->output(a.env, DType::F32, {qa.batch, qa.share ? qa.num_kv_heads : qa.num_q_heads, width}, in.dev);
  QuestBoundsArgs args = qa;
  args.out_stride = int32_t(width);
  Job* j = job.get();
  job->run = [j, args, out_i]() mutable {
    if (args.batch == 0) return Status::Ok;
    args.out = static_cast<float*>(j->out_ptr(out_i));
    return cpu_quest_bounds(args);
  };
#ifdef KVSQ_WITH_CUDA
  if (in.dev != kCpu) {
    const QuestStaged sq = stage_quest(*job, in);
    job->run = [j, args, out_i, sq]() mutable {
      if (args.batch == 0) return Status::Ok;
      args.out = static_cast<float*>(j->out_ptr(out_i));
      if (Status s = validate_quest_bounds(args); s != Status::Ok) return s;  // host index pointers
      return on_device(j, [&] {
        sq.bind(*j->staging, args);
        return cuda_quest_bounds(args, nullptr);
      });
    };
  }
#endif
  job->result = [](Napi::Env, std::vector<Napi::Object>& outs) -> Napi::Value { return outs[0]; };
  return job;
}

// questSelect: Quest's page choice for a decode step (bounds, top pages and
// the per-query-head lists in one kernel call); returns { selIndptr, selPages }
// in decodeAttention's layout, on the device of q.
std::unique_ptr<Job> parse_quest_select(const Napi::CallbackInfo& info) {
  Opts a(info, "questSelect");
  std::unique_ptr<Job> job;
  QuestInputs in = parse_quest_inputs(a, job);
  const int32_t budget = a.integer("budgetPages", 0, 1, kMaxI32, true);
  const QuestBoundsArgs& qa = in.args;
  const int64_t rows = int64_t(qa.batch) * qa.num_q_heads, g = qa.num_q_heads / qa.num_kv_heads;
  // What the selection is valid for (decodeAttention then trusts it on the device).
  auto tag = std::make_shared<SelectionTag>();
  tag->batch = qa.batch, tag->q_heads = qa.num_q_heads, tag->kv_heads = qa.num_kv_heads, tag->page_size = qa.page_size;
  tag->pages = list_pages(qa.kv_len, int64_t(qa.batch) * qa.num_kv_heads, qa.page_size);
  int64_t total = 0;  // the selection's size, from the (checked) lengths
  for (int64_t n : tag->pages) total += g * std::min<int64_t>(n, budget);
  size_t ind_i = job->output(a.env, DType::I32, {rows + 1}, in.dev);
  size_t pages_i = job->output(a.env, DType::I32, {total}, in.dev);
  QuestSelectArgs args;
  args.bounds = qa;
  args.budget_pages = budget;
  args.max_pages = int32_t(in.max_pages);
  args.q_checked = a.boolean("qChecked", false);
  Job* j = job.get();
  auto bind_outputs = [j, ind_i, pages_i](QuestSelectArgs& x) {
    x.sel_indptr = static_cast<int32_t*>(j->out_ptr(ind_i));
    x.sel_pages = static_cast<int32_t*>(j->out_ptr(pages_i));
  };
  auto mark = [j, ind_i, pages_i, tag](Status s) {
    if (s == Status::Ok) j->outputs[ind_i].selection = j->outputs[pages_i].selection = tag;
    return s;
  };
  job->run = [args, bind_outputs, mark]() mutable {
    if (args.bounds.batch == 0) return Status::Ok;  // outputs are zeroed: selIndptr = [0]
    bind_outputs(args);
    return mark(cpu_quest_select(args));
  };
#ifdef KVSQ_WITH_CUDA
  if (in.dev != kCpu) {
    const QuestStaged sq = stage_quest(*job, in);
    job->run = [j, args, bind_outputs, sq, mark]() mutable {
      if (args.bounds.batch == 0) return Status::Ok;
      // Host checks first, on the host copies of the tables and a host
      // stand-in for the outputs (validation reads no output).
      QuestSelectArgs h = args;
      int32_t probe = 0;
      h.sel_indptr = &probe;
      h.sel_pages = &probe;
      if (Status s = validate_quest_select(h); s != Status::Ok) return s;
      bind_outputs(args);
      return mark(on_device(j, [&] {
        sq.bind(*j->staging, args.bounds);
        return cuda_quest_select(args, nullptr);
      }));
    };
  }
#endif
  job->result = [](Napi::Env env, std::vector<Napi::Object>& outs) -> Napi::Value {
    Napi::Object r = Napi::Object::New(env);
    r.Set("selIndptr", outs[0]);
    r.Set("selPages", outs[1]);
    return r;
  };
  return job;
}

// Pools [pages, P, D] of one dtype; optional meta [pages, 2, D] and scores [pages, P].
struct Pools {
  Tensor *k = nullptr, *v = nullptr, *meta = nullptr, *score = nullptr;
  int64_t N = 0, P = 0, D = 0;
};
Pools read_pools(const Opts& a, bool with_meta) {
  Pools p;
  p.k = a.tensor("kPool");
  p.v = a.tensor("vPool");
  p.meta = with_meta ? a.tensor("metaPool", false) : nullptr;
  p.score = a.tensor("scorePool", false);
  need_dtype(a, p.k, "kPool", {DType::F32, DType::F16, DType::BF16});
  need_rank(a, p.k, "kPool", 3);
  if (S(p.v).dtype != S(p.k).dtype) throw_error(a.env, "KVSQ_DTYPE", a.op + ": vPool dtype differs from kPool");
  need_shape(a, p.v, "vPool", S(p.k).shape);
  p.N = S(p.k).shape[0];
  p.P = S(p.k).shape[1];
  p.D = S(p.k).shape[2];
  if (p.meta) {
    if (S(p.meta).dtype != S(p.k).dtype) throw_error(a.env, "KVSQ_DTYPE", a.op + ": metaPool dtype differs from kPool");
    need_shape(a, p.meta, "metaPool", {p.N, 2, p.D});
  }
  if (p.score) {
    need_dtype(a, p.score, "scorePool", {DType::F32});
    need_shape(a, p.score, "scorePool", {p.N, p.P});
  }
  return p;
}

std::unique_ptr<Job> parse_append(const Napi::CallbackInfo& info) {
  Opts a(info, "append");
  Pools p = read_pools(a, true);
  Tensor* kn = a.tensor("kNew");
  Tensor* vn = a.tensor("vNew");
  Tensor* slot = a.tensor("dstSlot");
  Tensor* reset = a.tensor("resetMeta", false);
  int dev = same_device(a, {{"kPool", p.k}, {"vPool", p.v}, {"metaPool", p.meta}, {"scorePool", p.score}, {"kNew", kn}, {"vNew", vn}},
                        {{"dstSlot", slot}, {"resetMeta", reset}});
  need_kernels_for(a, dev);
  auto job = new_job(a, dev);
  if (S(kn).dtype != S(p.k).dtype || S(vn).dtype != S(p.k).dtype)
    throw_error(a.env, "KVSQ_DTYPE", a.op + ": kNew and vNew must have the pools' dtype " + dtype_name(S(p.k).dtype));
  if (S(kn).shape.empty() || S(kn).shape.back() != p.D)
    throw_error(a.env, "KVSQ_SHAPE", a.op + ": kNew's last dimension must be the head dim " + std::to_string(p.D));
  need_shape(a, vn, "vNew", S(kn).shape);
  const int64_t count = S(kn).numel() / std::max<int64_t>(1, p.D);
  need_dtype(a, slot, "dstSlot", {DType::I32});
  need_numel(a, slot, "dstSlot", count);
  if (reset) {
    need_dtype(a, reset, "resetMeta", {DType::I32});
    need_numel(a, reset, "resetMeta", count);
  }
  for (Tensor* t : {p.k, p.v, p.meta, p.score, kn, vn, slot, reset}) job->use(t);
  const int32_t* h_reset = host_i32(a, *job, reset);
  std::vector<int64_t> slots = widen(slot, host_i32(a, *job, slot));
  job->scratch.emplace_back(reinterpret_cast<uint8_t*>(slots.data()), reinterpret_cast<uint8_t*>(slots.data() + count));
  job->scratch.emplace_back();
  if (reset) {
    job->scratch[1].resize(size_t(count));
    for (int64_t i = 0; i < count; ++i) job->scratch[1][i] = h_reset[i] != 0;
  }
  AppendArgs args;
  args.count = int32_t(count);
  args.head_dim = int32_t(p.D);
  args.page_size = int32_t(p.P);
  args.dtype = S(p.k).dtype;
  args.k_new = S(kn).data;
  args.v_new = S(vn).data;
  args.num_pages = p.N;
  args.k_pool = S(p.k).data;
  args.v_pool = S(p.v).data;
  args.meta_pool = p.meta ? S(p.meta).data : nullptr;
  args.score_pool = p.score ? static_cast<float*>(S(p.score).data) : nullptr;
  const bool has_reset = reset != nullptr;
  Job* j = job.get();
  job->run = [j, args, has_reset]() mutable {
    if (args.count == 0) return Status::Ok;
    args.dst_slot = reinterpret_cast<const int64_t*>(j->scratch[0].data());
    args.reset_meta = has_reset ? j->scratch[1].data() : nullptr;
    return cpu_append(args);
  };
#ifdef KVSQ_WITH_CUDA
  if (dev != kCpu) {
    Staging& st = job->stage();
    const size_t s_slot = st.add(job->scratch[0].data(), job->scratch[0].size());
    const size_t s_reset = has_reset ? st.add(job->scratch[1].data(), job->scratch[1].size()) : 0;
    job->run = [j, args, has_reset, s_slot, s_reset]() mutable {
      if (args.count == 0) return Status::Ok;
      args.dst_slot = reinterpret_cast<const int64_t*>(j->scratch[0].data());
      args.reset_meta = has_reset ? j->scratch[1].data() : nullptr;
      if (Status s = validate_append(args); s != Status::Ok) return s;  // host slots: in range, distinct
      // cuda_append updates a page's metadata from at most one row per launch
      // (its rows run in parallel); the CPU applies a page's rows in row
      // order. So with metaPool the rows go in consecutive runs whose pages
      // are distinct, launched in order on one stream: the CPU's result. A
      // decode step (one row per list, lists never share pages) is one run.
      std::vector<int32_t> starts{0};
      if (args.meta_pool) {
        std::unordered_set<int64_t> pages;
        for (int32_t i = 0; i < args.count; ++i)
          if (!pages.insert(args.dst_slot[i] / args.page_size).second) {
            starts.push_back(i);
            pages.clear();
            pages.insert(args.dst_slot[i] / args.page_size);
          }
      }
      starts.push_back(args.count);
      const size_t row = size_t(args.head_dim) * dtype_size(args.dtype);
      return on_device(j, [&] {
        const int64_t* slot_d = j->staging->dev<int64_t>(s_slot);
        const uint8_t* reset_d = has_reset ? j->staging->dev<uint8_t>(s_reset) : nullptr;
        for (size_t r = 0; r + 1 < starts.size(); ++r) {
          const int32_t b = starts[r];
          AppendArgs run = args;
          run.count = starts[r + 1] - b;
          run.k_new = static_cast<const uint8_t*>(args.k_new) + size_t(b) * row;
          run.v_new = static_cast<const uint8_t*>(args.v_new) + size_t(b) * row;
          run.dst_slot = slot_d + b;
          run.reset_meta = reset_d ? reset_d + b : nullptr;
          if (Status s = cuda_append(run, nullptr); s != Status::Ok) return s;
        }
        return Status::Ok;
      });
    };
  }
#endif
  return job;
}

std::unique_ptr<Job> parse_gather(const Napi::CallbackInfo& info) {
  Opts a(info, "gather");
  Pools p = read_pools(a, false);
  Tensor* ks = a.tensor("kSrc");
  Tensor* vs = a.tensor("vSrc");
  Tensor* src_row = a.tensor("srcRow");
  Tensor* dst = a.tensor("dstSlot");
  Tensor* ssrc = a.tensor("scoreSrc", false);
  int dev = same_device(a, {{"kPool", p.k}, {"vPool", p.v}, {"scorePool", p.score}, {"kSrc", ks}, {"vSrc", vs}, {"scoreSrc", ssrc}},
                        {{"srcRow", src_row}, {"dstSlot", dst}});
  need_kernels_for(a, dev);
  auto job = new_job(a, dev);
  if (S(ks).dtype != S(p.k).dtype || S(vs).dtype != S(p.k).dtype)
    throw_error(a.env, "KVSQ_DTYPE", a.op + ": kSrc and vSrc must have the pools' dtype " + dtype_name(S(p.k).dtype));
  if (S(ks).shape.empty() || S(ks).shape.back() != p.D)
    throw_error(a.env, "KVSQ_SHAPE", a.op + ": kSrc's last dimension must be the head dim " + std::to_string(p.D));
  need_shape(a, vs, "vSrc", S(ks).shape);
  const int64_t src_rows = S(ks).numel() / std::max<int64_t>(1, p.D);
  need_dtype(a, src_row, "srcRow", {DType::I32});
  need_dtype(a, dst, "dstSlot", {DType::I32});
  const int64_t count = S(src_row).numel();
  need_numel(a, dst, "dstSlot", count);
  if (bool(ssrc) != bool(p.score)) throw_error(a.env, "KVSQ_ARG", a.op + ": scoreSrc and scorePool go together");
  if (ssrc) {
    need_dtype(a, ssrc, "scoreSrc", {DType::F32});
    need_numel(a, ssrc, "scoreSrc", src_rows);
  }
  for (Tensor* t : {p.k, p.v, p.score, ks, vs, src_row, dst, ssrc}) job->use(t);
  std::vector<int64_t> rows = widen(src_row, host_i32(a, *job, src_row)), slots = widen(dst, host_i32(a, *job, dst));
  job->scratch.emplace_back(reinterpret_cast<uint8_t*>(rows.data()), reinterpret_cast<uint8_t*>(rows.data() + count));
  job->scratch.emplace_back(reinterpret_cast<uint8_t*>(slots.data()), reinterpret_cast<uint8_t*>(slots.data() + count));
  GatherArgs args;
  args.count = int32_t(count);
  args.head_dim = int32_t(p.D);
  args.dtype = S(p.k).dtype;
  args.k_src = S(ks).data;
  args.v_src = S(vs).data;
  args.src_rows = src_rows;
  args.score_src = ssrc ? static_cast<const float*>(S(ssrc).data) : nullptr;
  args.num_pages = p.N;
  args.page_size = int32_t(p.P);
  args.k_pool = S(p.k).data;
  args.v_pool = S(p.v).data;
  args.score_pool = p.score ? static_cast<float*>(S(p.score).data) : nullptr;
  Job* j = job.get();
  job->run = [j, args]() mutable {
    if (args.count == 0) return Status::Ok;
    args.src_row = reinterpret_cast<const int64_t*>(j->scratch[0].data());
    args.dst_slot = reinterpret_cast<const int64_t*>(j->scratch[1].data());
    return cpu_gather(args);
  };
#ifdef KVSQ_WITH_CUDA
  if (dev != kCpu) {
    Staging& st = job->stage();
    const size_t s_row = st.add(job->scratch[0].data(), job->scratch[0].size());
    const size_t s_slot = st.add(job->scratch[1].data(), job->scratch[1].size());
    job->run = [j, args, s_row, s_slot]() mutable {
      if (args.count == 0) return Status::Ok;
      args.src_row = reinterpret_cast<const int64_t*>(j->scratch[0].data());
      args.dst_slot = reinterpret_cast<const int64_t*>(j->scratch[1].data());
      // Host rows/slots: in range, slots distinct and (pool to pool) not read.
      if (Status s = validate_gather(args); s != Status::Ok) return s;
      return on_device(j, [&] {
        args.src_row = j->staging->dev<int64_t>(s_row);
        args.dst_slot = j->staging->dev<int64_t>(s_slot);
        return cuda_gather(args, nullptr);
      });
    };
  }
#endif
  return job;
}

std::unique_ptr<Job> parse_page_meta(const Napi::CallbackInfo& info) {
  Opts a(info, "pageMeta");
  Tensor* kp = a.tensor("kPool");
  Tensor* meta = a.tensor("metaPool");
  Tensor* ids = a.tensor("pageIds");
  Tensor* fill = a.tensor("fill");
  int dev = same_device(a, {{"kPool", kp}, {"metaPool", meta}}, {{"pageIds", ids}, {"fill", fill}});
  need_kernels_for(a, dev);
  auto job = new_job(a, dev);
  need_dtype(a, kp, "kPool", {DType::F32, DType::F16, DType::BF16});
  need_rank(a, kp, "kPool", 3);
  const int64_t N = S(kp).shape[0], P = S(kp).shape[1], D = S(kp).shape[2];
  if (S(meta).dtype != S(kp).dtype) throw_error(a.env, "KVSQ_DTYPE", a.op + ": metaPool dtype differs from kPool");
  need_shape(a, meta, "metaPool", {N, 2, D});
  need_dtype(a, ids, "pageIds", {DType::I32});
  need_dtype(a, fill, "fill", {DType::I32});
  const int64_t count = S(ids).numel();
  need_numel(a, fill, "fill", count);
  for (Tensor* t : {kp, meta, ids, fill}) job->use(t);
  const int32_t* h_ids = host_i32(a, *job, ids);
  const int32_t* h_fill = host_i32(a, *job, fill);
  PageMetaArgs args;
  args.count = int32_t(count);
  args.head_dim = int32_t(D);
  args.page_size = int32_t(P);
  args.dtype = S(kp).dtype;
  args.num_pages = N;
  args.k_pool = S(kp).data;
  args.meta_pool = S(meta).data;
  args.page_ids = h_ids;
  args.fill = h_fill;
  job->run = [args]() {
    if (args.count == 0) return Status::Ok;
    return cpu_page_meta(args);
  };
#ifdef KVSQ_WITH_CUDA
  if (dev != kCpu) {
    Staging& st = job->stage();
    const size_t s_ids = st.add(h_ids, i32_bytes(ids)), s_fill = st.add(h_fill, i32_bytes(fill));
    Job* j = job.get();
    job->run = [j, args, s_ids, s_fill]() mutable {
      if (args.count == 0) return Status::Ok;
      // Host ids/fills: in range, pages distinct (one writer per page's meta).
      if (Status s = validate_page_meta(args); s != Status::Ok) return s;
      return on_device(j, [&] {
        args.page_ids = j->staging->dev<int32_t>(s_ids);
        args.fill = j->staging->dev<int32_t>(s_fill);
        return cuda_page_meta(args, nullptr);
      });
    };
  }
#endif
  return job;
}

// readScores (write = false) and writeScores (write = true): the score pool
// rows of a set of lists, flattened in list order.
std::unique_ptr<Job> parse_scores(const Napi::CallbackInfo& info, bool write) {
  Opts a(info, write ? "writeScores" : "readScores");
  Tensor* score = a.tensor("scorePool");
  Tensor* indptr = a.tensor("pageIndptr");
  Tensor* ids = a.tensor("pageIds");
  Tensor* len = a.tensor("kvLen");
  Tensor* values = write ? a.tensor("values") : nullptr;
  int dev = same_device(a, {{"scorePool", score}, {"values", values}}, {{"pageIndptr", indptr}, {"pageIds", ids}, {"kvLen", len}});
  need_kernels_for(a, dev);
  auto job = new_job(a, dev);
  need_dtype(a, score, "scorePool", {DType::F32});
  need_rank(a, score, "scorePool", 2);
  for (auto [k, t] : {std::pair{"pageIndptr", indptr}, {"pageIds", ids}, {"kvLen", len}}) need_dtype(a, t, k, {DType::I32});
  const int32_t* h_indptr = host_i32(a, *job, indptr);
  const int32_t* h_ids = host_i32(a, *job, ids);
  const int32_t* h_len = host_i32(a, *job, len);
  const int64_t lists = S(len).numel();
  check_indptr(a, indptr, h_indptr, "pageIndptr", lists, S(ids).numel());
  // The output size is the sum of the lengths: check them first (see questBounds).
  const int64_t total = checked_total(a, h_indptr, h_len, lists, S(score).shape[1]);
  if (values) {  // at least the lists' values (a reused, larger buffer is fine): the first `total` are read
    need_dtype(a, values, "values", {DType::F32});
    need_at_least(a, values, "values", total);
  }
  for (Tensor* t : {score, indptr, ids, len, values}) job->use(t);
  size_t out_i = write ? 0 : job->output(a.env, DType::F32, {total}, dev);
  ReadScoresArgs args;
  args.lists = int32_t(lists);
  args.page_size = int32_t(S(score).shape[1]);
  args.num_pages = S(score).shape[0];
  args.score_pool = static_cast<const float*>(S(score).data);
  args.page_indptr = h_indptr;
  args.page_ids = h_ids;
  args.kv_len = h_len;
  args.write_back = write;
  args.in = values ? static_cast<const float*>(S(values).data) : nullptr;
  Job* j = job.get();
  job->run = [j, args, out_i, write, total]() mutable {
    if (total == 0) return Status::Ok;
    if (!write) args.out = static_cast<float*>(j->out_ptr(out_i));
    return cpu_read_scores(args);
  };
#ifdef KVSQ_WITH_CUDA
  if (dev != kCpu) {
    Staging& st = job->stage();
    const size_t s_indptr = st.add(h_indptr, i32_bytes(indptr)), s_ids = st.add(h_ids, i32_bytes(ids)),
                 s_len = st.add(h_len, i32_bytes(len));
    job->run = [j, args, out_i, write, total, s_indptr, s_ids, s_len]() mutable {
      if (total == 0) return Status::Ok;
      if (!write) args.out = static_cast<float*>(j->out_ptr(out_i));
      if (Status s = validate_read_scores(args); s != Status::Ok) return s;  // host index pointers
      return on_device(j, [&] {
        const Staging& sg = *j->staging;
        args.page_indptr = sg.dev<int32_t>(s_indptr);
        args.page_ids = sg.dev<int32_t>(s_ids);
        args.kv_len = sg.dev<int32_t>(s_len);
        return cuda_read_scores(args, nullptr);
      });
    };
  }
#endif
  if (!write) job->result = [](Napi::Env, std::vector<Napi::Object>& outs) -> Napi::Value { return outs[0]; };
  return job;
}
std::unique_ptr<Job> parse_read_scores(const Napi::CallbackInfo& info) { return parse_scores(info, false); }
std::unique_ptr<Job> parse_write_scores(const Napi::CallbackInfo& info) { return parse_scores(info, true); }

// countNonFinite({ x }) -> number of NaN/Inf elements (any float tensor), or
// the total over an array of up to 64 tensors on one device: on CUDA that is
// one read back (one wait) for all of them, which is why the cache checks a
// step's q, k and v in one call.
std::unique_ptr<Job> parse_count_nonfinite(const Napi::CallbackInfo& info) {
  Opts a(info, "countNonFinite");
  std::vector<Tensor*> xs;
  const Napi::Value xv = a.o.Get("x");
  if (xv.IsArray()) {
    const Napi::Array arr = xv.As<Napi::Array>();
    if (arr.Length() < 1 || arr.Length() > 64) throw_error(a.env, "KVSQ_ARG", "countNonFinite: x must be a Tensor or an array of 1 to 64 Tensors");
    for (uint32_t i = 0; i < arr.Length(); ++i) xs.push_back(a.tensor_of(arr.Get(i), a.where("x") + "[" + std::to_string(i) + "]"));
  } else {
    xs.push_back(a.tensor("x"));
  }
  const int dev = S(xs[0]).device;
  for (size_t i = 0; i < xs.size(); ++i) {
    if (S(xs[i]).device != dev)
      throw_error(a.env, "KVSQ_DEVICE", "countNonFinite: x[" + std::to_string(i) + "] is on " + S(xs[i]).device_name() +
                                            " but x[0] is on " + S(xs[0]).device_name());
    need_dtype(a, xs[i], "x", {DType::F32, DType::F16, DType::BF16});
  }
  need_kernels_for(a, dev);
  auto job = new_job(a, dev);
  std::vector<NonFiniteArgs> args(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    job->use(xs[i]);
    args[i].dtype = S(xs[i]).dtype;
    args[i].x = S(xs[i]).data;
    args[i].n = S(xs[i]).numel();
  }
  auto count = std::make_shared<int64_t>(0);
  job->run = [args, count]() mutable {
    for (NonFiniteArgs& x : args) {
      int64_t c = 0;
      x.count = &c;
      if (Status s = cpu_count_nonfinite(x); s != Status::Ok) return s;
      *count += c;
    }
    return Status::Ok;
  };
#ifdef KVSQ_WITH_CUDA
  if (dev != kCpu) {
    // One 8-byte device count per tensor, then all of them back in one copy.
    const size_t c_i = job->output(a.env, DType::I32, {int64_t(2 * xs.size())}, dev);
    Job* j = job.get();
    job->run = [j, args, c_i, count, dev]() mutable {
      int64_t* dc = static_cast<int64_t*>(j->out_ptr(c_i));
      Status s = on_device(j, [&] {
        for (size_t i = 0; i < args.size(); ++i) {
          args[i].count = dc + i;
          if (Status st = cuda_count_nonfinite(args[i], nullptr); st != Status::Ok) return st;
        }
        return Status::Ok;
      });
      if (s != Status::Ok) return s;
      std::vector<int64_t> h(args.size());
      s = copy_device_to_host(dev, h.data(), dc, h.size() * sizeof(int64_t));
      for (int64_t c : h) *count += c;
      return s;
    };
  }
#endif
  job->result = [count](Napi::Env env, std::vector<Napi::Object>&) -> Napi::Value { return Napi::Number::New(env, double(*count)); };
  return job;
}

template <Parser P>
Napi::Value Sync(const Napi::CallbackInfo& info) {
  return run_sync(info, P);
}
template <Parser P>
Napi::Value Async(const Napi::CallbackInfo& info) {
  return run_async(info, P);
}

}  // namespace

void register_ops(Napi::Env env, Napi::Object exports) {
  struct Entry {
    const char* name;
    Napi::Value (*sync)(const Napi::CallbackInfo&);
    Napi::Value (*async)(const Napi::CallbackInfo&);
  };
  const Entry entries[] = {
      {"decodeAttention", Sync<parse_decode_attention>, Async<parse_decode_attention>},
      {"windowScores", Sync<parse_window_scores>, Async<parse_window_scores>},
      {"pool1d", Sync<parse_pool1d>, Async<parse_pool1d>},
      {"chunkScores", Sync<parse_chunk_scores>, Async<parse_chunk_scores>},
      {"topk", Sync<parse_topk>, Async<parse_topk>},
      {"questBounds", Sync<parse_quest_bounds>, Async<parse_quest_bounds>},
      {"questSelect", Sync<parse_quest_select>, Async<parse_quest_select>},
      {"append", Sync<parse_append>, Async<parse_append>},
      {"gather", Sync<parse_gather>, Async<parse_gather>},
      {"pageMeta", Sync<parse_page_meta>, Async<parse_page_meta>},
      {"readScores", Sync<parse_read_scores>, Async<parse_read_scores>},
      {"writeScores", Sync<parse_write_scores>, Async<parse_write_scores>},
      {"countNonFinite", Sync<parse_count_nonfinite>, Async<parse_count_nonfinite>},
  };
  for (const Entry& e : entries) {
    exports.Set(e.name, Napi::Function::New(env, e.sync, e.name));
    exports.Set(std::string(e.name) + "Async", Napi::Function::New(env, e.async, std::string(e.name) + "Async"));
  }
}

}  // namespace napi
}  // namespace kvsq
