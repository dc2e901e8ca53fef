// Kiln's native binding (node-addon-api). It dlopens an artifact's library and drives it through
// the C ABI of codegen-templates/common/kiln_abi.h: it links neither CUDA nor any model, so the
// same binding serves the cpu and cuda targets. Everything slow (opening the device, reading and
// converting weights, forward passes, downloads) runs on the libuv pool through AsyncWorkers;
// errors come back as JS Errors with a `code` (E_ARTIFACT, E_IO, E_RUNTIME, E_USAGE).

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <napi.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../../codegen-templates/common/kiln_abi.h"
#include "../../codegen-templates/common/kiln_types.h"
#include "../../codegen-templates/common/kiln_quant.h"

namespace {

struct Abi {
  int (*abi_version)();
  const char* (*target)();
  const char* (*artifact_hash)();
  const char* (*last_error)();
  int (*init)(int);
  int (*memory_info)(int64_t*, int64_t*);
  int (*malloc_)(void**, int64_t);
  int (*free_)(void*);
  int (*upload)(void*, const void*, int64_t);
  int (*download)(void*, const void*, int64_t);
  int (*synchronize)();
  int (*num_inputs)();
  int (*num_weights)();
  int (*num_outputs)();
  int (*forward)(void* const*, const kiln_tensor*, kiln_tensor*);
  int (*set_wait)(int);
  int (*download_start)(const void*, int64_t, void**);
  int (*download_wait)(void*, void*);
  // optional: quantize-on-load on the target (null in artifacts built before it)
  int (*quantize4)(void*, const float*, int64_t, int64_t, int64_t, int, const double*);
  int (*quantize8)(void*, const float*, int64_t, int64_t);
};


Napi::Error MakeError(Napi::Env env, const std::string& code, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

// The lock of a loaded library file: dlopen hands every Artifact of one path the same handle, and
// with it the same stream, allocator and CUDA graph table, so two Models of one artifact must take
// turns as one Model's calls do.
static std::shared_ptr<std::mutex> LibraryLock(void* handle) {
  static std::mutex reg;
  static std::map<void*, std::weak_ptr<std::mutex>> locks;
  std::lock_guard<std::mutex> g(reg);
  std::weak_ptr<std::mutex>& w = locks[handle];
  std::shared_ptr<std::mutex> m = w.lock();
  if (!m) w = m = std::make_shared<std::mutex>();
  return m;
}

// One loaded artifact library. Shared (shared_ptr) by the JS object and by every buffer it made,
// so the library stays loaded until the last device buffer is freed.
struct Library {
  void* handle = nullptr;
  Abi abi{};
  std::string path;
  // one call into the library at a time (its stream is not reentrant): shared by every Library of
  // the same handle (LibraryLock)
  std::shared_ptr<std::mutex> mu = std::make_shared<std::mutex>();
  ~Library() {
    if (handle) dlclose(handle);
  }
  std::string Error(const char* what, int rc) {
    return std::string(what) + " failed (" + std::to_string(rc) + "): " + abi.last_error();
  }
};

struct Buffer {
  std::shared_ptr<Library> lib;
  void* ptr = nullptr;
  int64_t bytes = 0;
  ~Buffer() {
    if (ptr) lib->abi.free_(ptr);
  }
};

// ------------------------------------------------------------------------------------ DeviceTensor

// A tensor in the artifact's memory (host for cpu, device for cuda): the KV cache between steps.
class DeviceTensor : public Napi::ObjectWrap<DeviceTensor> {
 public:
  static Napi::FunctionReference ctor;
  static Napi::Function Init(Napi::Env env) {
    Napi::Function f = DefineClass(env, "DeviceTensor",
                                   {InstanceMethod("free", &DeviceTensor::Free), InstanceAccessor("dtype", &DeviceTensor::Dtype, nullptr),
                                    InstanceAccessor("shape", &DeviceTensor::Shape, nullptr), InstanceAccessor("bytes", &DeviceTensor::Bytes, nullptr),
                                    InstanceAccessor("freed", &DeviceTensor::Freed, nullptr), InstanceMethod("reshape", &DeviceTensor::Reshape)});
    ctor = Napi::Persistent(f);
    ctor.SuppressDestruct();
    return f;
  }
  DeviceTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceTensor>(info) {}
  std::shared_ptr<Buffer> buf;
  int32_t dtype = 0;
  std::vector<int64_t> shape;

 private:
  Napi::Value Free(const Napi::CallbackInfo& info) {
    buf.reset();
    return info.Env().Undefined();
  }
  Napi::Value Dtype(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), dtype); }
  Napi::Value Shape(const Napi::CallbackInfo& info) {
    Napi::Array a = Napi::Array::New(info.Env(), shape.size());
    for (size_t i = 0; i < shape.size(); i++) a[i] = Napi::Number::New(info.Env(), (double)shape[i]);
    return a;
  }
  Napi::Value Bytes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), buf ? (double)buf->bytes : 0); }
  Napi::Value Freed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !buf); }
  // reshape(shape): another tensor over the same buffer (the buffer lives while either does)
  Napi::Value Reshape(const Napi::CallbackInfo& info);
};
Napi::FunctionReference DeviceTensor::ctor;

Napi::Object WrapTensor(Napi::Env env, std::shared_ptr<Buffer> buf, int32_t dtype, std::vector<int64_t> shape) {
  Napi::Object o = DeviceTensor::ctor.New({});
  DeviceTensor* t = DeviceTensor::Unwrap(o);
  t->buf = std::move(buf);
  t->dtype = dtype;
  t->shape = std::move(shape);
  return o;
}
Napi::Value DeviceTensor::Reshape(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto shown = [](const std::vector<int64_t>& v) {
    std::string r = "[";
    for (size_t i = 0; i < v.size(); i++) r += (i ? ", " : "") + std::to_string(v[i]);
    return r + "]";
  };
  if (!buf) {
    MakeError(env, "E_USAGE", "reshape of a freed device tensor").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!info[0].IsArray()) {
    MakeError(env, "E_USAGE", "reshape(shape): shape must be an array of non-negative integers").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array a = info[0].As<Napi::Array>();
  std::vector<int64_t> to;
  int64_t n = 1, have = 1;
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value v = a.Get(k);
    const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0) || d != (double)(int64_t)d || a.Length() > KILN_MAX_RANK) {
      MakeError(env, "E_USAGE", "reshape(shape): shape must be an array of at most " + std::to_string(KILN_MAX_RANK) + " non-negative integers").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    to.push_back((int64_t)d);
    n *= (int64_t)d;
  }
  for (int64_t d : shape) have *= d;
  if (n != have) {
    MakeError(env, "E_USAGE", "reshape of a tensor of shape " + shown(shape) + " (" + std::to_string(have) + " elements) to " + shown(to) + " (" + std::to_string(n) + ")").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return WrapTensor(env, buf, dtype, std::move(to));
}
// ------------------------------------------------------------------------------------ Pending
// A download queued after a forward that did not wait (kiln_download_start): wait() resolves with
// the bytes once the copy is done, without waiting for work queued after it (the next decode step).
class Pending : public Napi::ObjectWrap<Pending> {
 public:
  static Napi::FunctionReference ctor;
  static Napi::Function Init(Napi::Env env) {
    Napi::Function f = DefineClass(env, "Pending", {InstanceMethod("wait", &Pending::Wait)});
    ctor = Napi::Persistent(f);
    ctor.SuppressDestruct();
    return f;
  }
  Pending(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Pending>(info) {}
  ~Pending() {
    // never waited for: release the ticket (blocks until its copy is done; rare: a dropped step)
    if (ticket && lib) lib->abi.download_wait(ticket, nullptr);
  }
  std::shared_ptr<Library> lib;
  void* ticket = nullptr;
  int64_t bytes = 0;
  std::shared_ptr<Buffer> keep;  // the source buffer stays allocated until the copy is done

 private:
  Napi::Value Wait(const Napi::CallbackInfo& info);
};
Napi::FunctionReference Pending::ctor;

// ------------------------------------------------------------------------------------ workers

class Worker : public Napi::AsyncWorker {
 public:
  Worker(Napi::Env env) : Napi::AsyncWorker(env), deferred(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred.Promise(); }

 protected:
  void Fail(const std::string& code, const std::string& msg) {
    code_ = code;
    SetError(msg);
  }
  void OnError(const Napi::Error& e) override {
    Napi::Error err = MakeError(Env(), code_.empty() ? "E_RUNTIME" : code_, e.Message());
    deferred.Reject(err.Value());
  }
  Napi::Promise::Deferred deferred;
  std::string code_;
};

class InitWorker : public Worker {
 public:
  InitWorker(Napi::Env env, std::shared_ptr<Library> lib, int device) : Worker(env), lib(std::move(lib)), device(device) {}
  void Execute() override {
    std::lock_guard<std::mutex> g(*lib->mu);
    int rc = lib->abi.init(device);
    if (rc) Fail("E_RUNTIME", lib->Error("kiln_init", rc));
  }
  void OnOK() override { deferred.Resolve(Env().Undefined()); }

 private:
  std::shared_ptr<Library> lib;
  int device;
};

// A weight to load: bytes [offset, offset + count·size(src)) of a file, converted to dst.
struct WeightJob {
  std::string file;
  int64_t offset, count;
  int32_t src, dst;
  std::string name;
  // quantize on load: 0 none, 1 4-bit (with `code`), 2 int8; rows × cols = the weight's [N, K]
  int32_t quant = 0;
  int64_t block = 64, rows = 0, cols = 0;
  bool dq = false;
  double code[16] = {0};
};

// Runs f(begin, end) over [0, n) on up to hardware_concurrency threads (chunks of ≥ 1M items).
template <typename F>
void ParallelFor(int64_t n, F f) {
  const int64_t chunk = 1 << 20;
  int64_t threads = std::min<int64_t>((n + chunk - 1) / chunk, std::max(1u, std::thread::hardware_concurrency()));
  if (threads <= 1) return f((int64_t)0, n);
  std::vector<std::thread> pool;
  const int64_t per = (n + threads - 1) / threads;
  for (int64_t t = 0; t < threads; t++) {
    const int64_t b = t * per, e = std::min(n, b + per);
    if (b < e) pool.emplace_back([=] { f(b, e); });
  }
  for (auto& th : pool) th.join();
}

// Reads each weight through a read-only mmap of its file, converts it on the host when the
// dtypes differ, and copies it to the target. Peak host memory: one converted tensor.
class LoadWorker : public Worker {
 public:
  LoadWorker(Napi::Env env, std::shared_ptr<Library> lib, std::vector<WeightJob> jobs, Napi::Function progress)
      : Worker(env), lib(std::move(lib)), jobs(std::move(jobs)) {
    if (!progress.IsEmpty())
      tsfn = Napi::ThreadSafeFunction::New(env, progress, "kiln-load-progress", 0, 1);
  }
  ~LoadWorker() override {
    if (tsfn) tsfn.Release();
  }
  void Execute() override {
    std::string mapped_path;
    void* map = nullptr;
    size_t map_size = 0;
    auto unmap = [&] {
      if (map) munmap(map, map_size);
      map = nullptr;
    };
    std::vector<uint8_t> staging;
    int64_t done = 0, total = 0;
    for (auto& j : jobs) total += j.count * kiln_dtype_bytes(j.dst);
    for (auto& j : jobs) {
      if (j.file != mapped_path) {
        unmap();
        int fd = open(j.file.c_str(), O_RDONLY);
        if (fd < 0) return Fail("E_IO", j.file + ": cannot open: " + strerror(errno));
        struct stat st;
        fstat(fd, &st);
        map_size = (size_t)st.st_size;
        map = map_size ? mmap(nullptr, map_size, PROT_READ, MAP_PRIVATE, fd, 0) : nullptr;
        close(fd);
        if (map == MAP_FAILED) {
          map = nullptr;
          return Fail("E_IO", j.file + ": mmap failed: " + strerror(errno));
        }
        mapped_path = j.file;
      }
      int64_t src_bytes = j.count * kiln_dtype_bytes(j.src);
      if (j.offset < 0 || (size_t)(j.offset + src_bytes) > map_size) {
        unmap();
        return Fail("E_SAFETENSORS", j.file + " (" + j.name + "): tensor data is past the end of the file (truncated?)");
      }
      const uint8_t* src = (const uint8_t*)map + j.offset;
      const void* host = src;
      int64_t bytes = j.count * kiln_dtype_bytes(j.dst);
      if (j.quant) {
        // the weight in its model dtype (f32 values rounded to dst), then quantized (kiln_quant.h):
        // on the target when the artifact exports kiln_quantize4/8 (the f32 tensor goes up to a
        // temporary buffer, freed at once: peak target memory ≈ the packed weights + one f32
        // tensor), else here on the host
        // one host buffer for every weight (no page faults and zero fill per tensor)
        if (fbuf.size() < (size_t)j.count) fbuf.resize((size_t)j.count);
        float* f = fbuf.data();
        bool ok = true;
        ParallelFor(j.count, [&](int64_t b, int64_t e) {
          const int64_t sz = kiln_dtype_bytes(j.src);
          if (!Convert(src + b * sz, j.src, (uint8_t*)(f + b), KILN_F32, e - b)) ok = false;
          if (j.dst == KILN_BF16 && j.src != KILN_BF16) for (int64_t i = b; i < e; i++) f[i] = kiln::bf16_bits_to_f32(kiln::f32_to_bf16_bits(f[i]));
          if (j.dst == KILN_F16 && j.src != KILN_F16) for (int64_t i = b; i < e; i++) f[i] = kiln::f16_bits_to_f32(kiln::f32_to_f16_bits(f[i]));
        });
        if (!ok) {
          unmap();
          return Fail("E_USAGE", j.name + ": cannot quantize a weight of dtype " + std::to_string(j.src));
        }
        bytes = j.quant == 1 ? kiln::quant::bytes4(j.count, j.block, j.dq) : kiln::quant::bytes8(j.rows, j.cols);
        if (j.quant == 1 ? lib->abi.quantize4 != nullptr : lib->abi.quantize8 != nullptr) {
          std::string err = QuantizeOnTarget(j, f, bytes);
          if (!err.empty()) {
            unmap();
            return Fail("E_RUNTIME", j.name + ": " + err);
          }
          done += bytes;
          Progress(done, total);
          continue;
        }
        staging.assign((size_t)bytes, 0);
        if (j.quant == 1) kiln::quant::quantize4(f, j.count, j.block, j.dq, j.code, staging.data(), j.cols);
        else kiln::quant::quantize8(f, j.rows, j.cols, staging.data());
        host = staging.data();
      } else if (j.src != j.dst) {
        staging.resize((size_t)bytes);
        if (!Convert(src, j.src, staging.data(), j.dst, j.count)) {
          unmap();
          return Fail("E_USAGE", j.name + ": cannot convert " + std::to_string(j.src) + " to " + std::to_string(j.dst));
        }
        host = staging.data();
      }
      auto buf = std::make_shared<Buffer>();
      buf->lib = lib;
      std::lock_guard<std::mutex> g(*lib->mu);
      int rc = lib->abi.malloc_(&buf->ptr, bytes);
      if (rc) {
        unmap();
        return Fail(rc == KILN_ERR_OOM ? "E_OOM" : "E_RUNTIME", j.name + ": " + lib->Error("kiln_malloc", rc));
      }
      buf->bytes = bytes;
      rc = lib->abi.upload(buf->ptr, host, bytes);
      if (rc) {
        unmap();
        return Fail("E_RUNTIME", j.name + ": " + lib->Error("kiln_upload", rc));
      }
      buffers.push_back(buf);
      done += bytes;
      Progress(done, total);
    }
    unmap();
    std::lock_guard<std::mutex> g(*lib->mu);
    int rc = lib->abi.synchronize();
    if (rc) Fail("E_RUNTIME", lib->Error("kiln_synchronize", rc));
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Array out = Napi::Array::New(env, buffers.size());
    for (size_t i = 0; i < buffers.size(); i++) {
      std::vector<int64_t> shape{(int64_t)(buffers[i]->bytes / kiln_dtype_bytes(jobs[i].dst))};
      out[i] = WrapTensor(env, buffers[i], jobs[i].dst, shape);
    }
    deferred.Resolve(out);
  }

 private:
  void Progress(int64_t done, int64_t total) {
    if (!tsfn) return;
    int64_t* p = new int64_t[2]{done, total};
    tsfn.NonBlockingCall(p, [](Napi::Env env, Napi::Function cb, int64_t* p) {
      cb.Call({Napi::Number::New(env, (double)p[0]), Napi::Number::New(env, (double)p[1])});
      delete[] p;
    });
  }
  // f (the weight as f32) → a temporary target buffer → kiln_quantize4/8 into a new buffer of
  // `bytes`, kept in `buffers`; the temporary is freed before returning. "" or the error.
  std::string QuantizeOnTarget(const WeightJob& j, const float* f, int64_t bytes) {
    std::lock_guard<std::mutex> g(*lib->mu);
    auto tmp = std::make_shared<Buffer>();
    tmp->lib = lib;
    auto buf = std::make_shared<Buffer>();
    buf->lib = lib;
    int rc = lib->abi.malloc_(&buf->ptr, bytes);
    if (rc) return lib->Error("kiln_malloc", rc);
    buf->bytes = bytes;
    const int64_t fbytes = 4 * j.count;
    if ((rc = lib->abi.malloc_(&tmp->ptr, fbytes))) return lib->Error("kiln_malloc (f32 staging)", rc);
    tmp->bytes = fbytes;
    if ((rc = lib->abi.upload(tmp->ptr, f, fbytes))) return lib->Error("kiln_upload", rc);
    rc = j.quant == 1 ? lib->abi.quantize4(buf->ptr, (const float*)tmp->ptr, j.count, j.cols, j.block, j.dq ? 1 : 0, j.code)
                      : lib->abi.quantize8(buf->ptr, (const float*)tmp->ptr, j.rows, j.cols);
    if (rc) return lib->Error(j.quant == 1 ? "kiln_quantize4" : "kiln_quantize8", rc);
    tmp.reset();  // back to the target's allocator now
    buffers.push_back(buf);
    return "";
  }
  static bool Convert(const uint8_t* src, int s, uint8_t* dst, int d, int64_t n) {
    auto load = [&](int64_t i) -> float {
      uint16_t h;
      float f;
      switch (s) {
        case KILN_F32: memcpy(&f, src + 4 * i, 4); return f;
        case KILN_F16: memcpy(&h, src + 2 * i, 2); return kiln::f16_bits_to_f32(h);
        case KILN_BF16: memcpy(&h, src + 2 * i, 2); return kiln::bf16_bits_to_f32(h);
      }
      return 0;
    };
    bool floats = (s == KILN_F32 || s == KILN_F16 || s == KILN_BF16) && (d == KILN_F32 || d == KILN_F16 || d == KILN_BF16);
    if (!floats) return false;
    for (int64_t i = 0; i < n; i++) {
      float f = load(i);
      if (d == KILN_F32) memcpy(dst + 4 * i, &f, 4);
      else {
        uint16_t h = d == KILN_F16 ? kiln::f32_to_f16_bits(f) : kiln::f32_to_bf16_bits(f);
        memcpy(dst + 2 * i, &h, 2);
      }
    }
    return true;
  }
  std::shared_ptr<Library> lib;
  std::vector<WeightJob> jobs;
  std::vector<std::shared_ptr<Buffer>> buffers;
  std::vector<float> fbuf;  // a weight as f32 before quantization
  Napi::ThreadSafeFunction tsfn;
};

// An input of a forward: host bytes to upload, or a DeviceTensor already on the target.
struct InputArg {
  int32_t dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> host;  // copied from JS on the main thread
  std::shared_ptr<Buffer> dev;
};

// The weights of a forward: the buffers (kept alive while it runs) and their pointers, built once
// (bindWeights) and shared by every call instead of copied into each.
struct WeightSet {
  std::vector<std::shared_ptr<Buffer>> bufs;
  std::vector<void*> ptrs;
};

// A worker whose result is bytes on the host (`host`), handed to JS as an ArrayBuffer.
class BytesWorker : public Worker {
 public:
  using Worker::Worker;
  void OnOK() override {
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(Env(), host.size());
    if (!host.empty()) memcpy(ab.Data(), host.data(), host.size());
    deferred.Resolve(ab);
  }

 protected:
  std::vector<uint8_t> host;
};
class PendingWorker : public BytesWorker {
 public:
  PendingWorker(Napi::Env env, std::shared_ptr<Library> lib, void* ticket, int64_t bytes, std::shared_ptr<Buffer> keep)
      : BytesWorker(env), lib(std::move(lib)), ticket(ticket), keep(std::move(keep)) {
    host.resize((size_t)bytes);
  }
  void Execute() override {
    // not under lib->mu: a forward may be issuing the next step meanwhile
    int rc = lib->abi.download_wait(ticket, host.data());
    keep.reset();
    if (rc) Fail("E_RUNTIME", lib->Error("kiln_download_wait", rc));
  }

 private:
  std::shared_ptr<Library> lib;
  void* ticket;
  std::shared_ptr<Buffer> keep;
};
Napi::Value Pending::Wait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ticket) {
    Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
    d.Reject(MakeError(env, "E_USAGE", "this download was waited for already").Value());
    return d.Promise();
  }
  auto* w = new PendingWorker(env, lib, ticket, bytes, std::move(keep));
  ticket = nullptr;
  w->Queue();
  return w->Promise();
}

class ForwardWorker : public Worker {
 public:
  // to_host per output: 0 stays on the target, 1 comes to the host, 2 stays on the target and a
  // download of it is queued (a Pending); wait = false: kiln_set_wait(0) around the call
  ForwardWorker(Napi::Env env, std::shared_ptr<Library> lib, std::shared_ptr<const WeightSet> weights, std::vector<InputArg> inputs,
                std::vector<int> to_host, bool wait)
      : Worker(env), lib(std::move(lib)), weights(std::move(weights)), inputs(std::move(inputs)), to_host(std::move(to_host)), wait(wait) {}
  ~ForwardWorker() {
    // a forward that failed after queuing downloads: release their tickets
    for (void* t : tickets)
      if (t) lib->abi.download_wait(t, nullptr);
  }
  void Execute() override {
    std::lock_guard<std::mutex> g(*lib->mu);
    struct Waits {
      Library* lib;
      bool on;
      ~Waits() {
        if (on) lib->abi.set_wait(1);
      }
    } waits{lib.get(), !wait};
    if (!wait) lib->abi.set_wait(0);
    Run();
  }
  void Run() {
    std::vector<kiln_tensor> in(inputs.size());
    std::vector<std::shared_ptr<Buffer>> inbuf(inputs.size());  // each input's buffer (uploaded here or passed in)
    for (size_t i = 0; i < inputs.size(); i++) {
      InputArg& a = inputs[i];
      kiln_tensor& t = in[i];
      t.dtype = a.dtype;
      t.rank = (int32_t)a.shape.size();
      for (size_t k = 0; k < a.shape.size(); k++) t.shape[k] = a.shape[k];
      if (a.dev) {
        t.data = a.dev->ptr;
        inbuf[i] = a.dev;
      } else {
        auto b = std::make_shared<Buffer>();
        b->lib = lib;
        int rc = lib->abi.malloc_(&b->ptr, (int64_t)a.host.size());
        if (rc) return Fail(rc == KILN_ERR_OOM ? "E_OOM" : "E_RUNTIME", lib->Error("kiln_malloc", rc));
        b->bytes = (int64_t)a.host.size();
        if (!a.host.empty() && (rc = lib->abi.upload(b->ptr, a.host.data(), b->bytes))) return Fail("E_RUNTIME", lib->Error("kiln_upload", rc));
        t.data = b->ptr;
        inbuf[i] = b;
      }
    }
    int n_out = lib->abi.num_outputs();
    std::vector<kiln_tensor> out(n_out);
    memset(out.data(), 0, sizeof(kiln_tensor) * out.size());
    int rc = lib->abi.forward(weights->ptrs.data(), in.data(), out.data());
    if (rc) return Fail(rc == KILN_ERR_OOM ? "E_OOM" : rc == KILN_ERR_INVALID ? "E_USAGE" : "E_RUNTIME", lib->abi.last_error());
    for (int j = 0; j < n_out; j++) {
      int64_t n = 1;
      std::vector<int64_t> shape;
      for (int k = 0; k < out[j].rank; k++) {
        n *= out[j].shape[k];
        shape.push_back(out[j].shape[k]);
      }
      // an output written in place into an input (the static KV cache) shares that input's buffer
      std::shared_ptr<Buffer> b;
      int alias = -1;
      for (size_t i = 0; i < inputs.size() && !b; i++)
        if (out[j].data && inbuf[i] && inbuf[i]->ptr == out[j].data) {
          b = inbuf[i];
          if (inputs[i].dev) alias = (int)i;  // the caller's own device tensor
        }
      aliases.push_back(alias);
      if (!b) {
        b = std::make_shared<Buffer>();
        b->lib = lib;
        b->ptr = out[j].data;
        b->bytes = n * kiln_dtype_bytes(out[j].dtype);
      }
      results.push_back({out[j].dtype, shape, {}, b});
    }
    tickets.assign(n_out, nullptr);
    for (int j = 0; j < n_out; j++) {
      if (j < (int)to_host.size() && to_host[j] == 2) {
        InputArg& r = results[j];
        if ((rc = lib->abi.download_start(r.dev->ptr, r.dev->bytes, &tickets[j]))) return Fail("E_RUNTIME", lib->Error("kiln_download_start", rc));
      } else if (j < (int)to_host.size() && to_host[j]) {
        InputArg& r = results[j];
        r.host.resize((size_t)r.dev->bytes);
        if (r.dev->bytes && (rc = lib->abi.download(r.host.data(), r.dev->ptr, r.dev->bytes))) return Fail("E_RUNTIME", lib->Error("kiln_download", rc));
        r.dev.reset();
      }
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Array out = Napi::Array::New(env, results.size());
    for (size_t j = 0; j < results.size(); j++) {
      InputArg& r = results[j];
      if (r.dev && aliases[j] >= 0) {
        // written in place into input i (the static KV cache): the caller keeps using its own
        // tensor object; a number says which (no new wrapper a step for every cache tensor)
        out[j] = Napi::Number::New(env, aliases[j]);
      } else if (r.dev && tickets[j]) {
        Napi::Object o = Napi::Object::New(env);
        Napi::Object p = Pending::ctor.New({});
        Pending* pd = Pending::Unwrap(p);
        pd->lib = lib;
        pd->ticket = tickets[j];
        pd->bytes = r.dev->bytes;
        pd->keep = r.dev;
        tickets[j] = nullptr;
        o.Set("tensor", WrapTensor(env, r.dev, r.dtype, r.shape));
        o.Set("pending", p);
        out[j] = o;
      } else if (r.dev) {
        out[j] = WrapTensor(env, r.dev, r.dtype, r.shape);
      } else {
        Napi::Object o = Napi::Object::New(env);
        Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, r.host.size());
        if (!r.host.empty()) memcpy(ab.Data(), r.host.data(), r.host.size());
        Napi::Array shape = Napi::Array::New(env, r.shape.size());
        for (size_t k = 0; k < r.shape.size(); k++) shape[k] = Napi::Number::New(env, (double)r.shape[k]);
        o.Set("dtype", Napi::Number::New(env, r.dtype));
        o.Set("shape", shape);
        o.Set("data", ab);
        out[j] = o;
      }
    }
    deferred.Resolve(out);
  }

 private:
  std::shared_ptr<Library> lib;
  std::shared_ptr<const WeightSet> weights;
  std::vector<InputArg> inputs;
  std::vector<int> to_host;
  bool wait;
  std::vector<void*> tickets;
  std::vector<InputArg> results;
  std::vector<int> aliases;  // per output: the device-tensor input it was written into, or -1
};

// The bytes of a target buffer, copied to the host (tests compare quantized weights across targets).
class DownloadWorker : public BytesWorker {
 public:
  DownloadWorker(Napi::Env env, std::shared_ptr<Library> lib, std::shared_ptr<Buffer> buf) : BytesWorker(env), lib(std::move(lib)), buf(std::move(buf)) {}
  void Execute() override {
    std::lock_guard<std::mutex> g(*lib->mu);
    host.resize((size_t)buf->bytes);
    int rc = buf->bytes ? lib->abi.download(host.data(), buf->ptr, buf->bytes) : 0;
    if (rc) Fail("E_RUNTIME", lib->Error("kiln_download", rc));
  }

 private:
  std::shared_ptr<Library> lib;
  std::shared_ptr<Buffer> buf;
};

// ------------------------------------------------------------------------------------ Artifact

class Artifact : public Napi::ObjectWrap<Artifact> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Artifact",
                       {InstanceMethod("init", &Artifact::InitDevice), InstanceMethod("loadWeights", &Artifact::LoadWeights),
                        InstanceMethod("forward", &Artifact::Forward), InstanceMethod("bindWeights", &Artifact::BindWeights),
                        InstanceMethod("memoryInfo", &Artifact::MemoryInfo),
                        InstanceMethod("download", &Artifact::Download),
                        InstanceAccessor("target", &Artifact::Target, nullptr), InstanceAccessor("hash", &Artifact::Hash, nullptr),
                        InstanceAccessor("counts", &Artifact::Counts, nullptr)});
  }

  Artifact(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Artifact>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsString()) {
      MakeError(env, "E_USAGE", "Artifact(libraryPath): a path is required").ThrowAsJavaScriptException();
      return;
    }
    lib = std::make_shared<Library>();
    lib->path = info[0].As<Napi::String>();
    lib->handle = dlopen(lib->path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib->handle) {
      MakeError(env, "E_ARTIFACT", std::string("cannot load the artifact library: ") + dlerror()).ThrowAsJavaScriptException();
      return;
    }
    lib->mu = LibraryLock(lib->handle);
#define KILN_SYM(field, name)                                                                                              \
  lib->abi.field = reinterpret_cast<decltype(lib->abi.field)>(dlsym(lib->handle, name));                                 \
  if (!lib->abi.field) {                                                                                                   \
    MakeError(env, "E_ARTIFACT", lib->path + ": not a Kiln artifact library (no symbol " name ")").ThrowAsJavaScriptException(); \
    return;                                                                                                                \
  }
    KILN_SYM(abi_version, "kiln_abi_version")
    KILN_SYM(target, "kiln_target")
    KILN_SYM(artifact_hash, "kiln_artifact_hash")
    KILN_SYM(last_error, "kiln_last_error")
    KILN_SYM(init, "kiln_init")
    KILN_SYM(memory_info, "kiln_memory_info")
    KILN_SYM(malloc_, "kiln_malloc")
    KILN_SYM(free_, "kiln_free")
    KILN_SYM(upload, "kiln_upload")
    KILN_SYM(download, "kiln_download")
    KILN_SYM(synchronize, "kiln_synchronize")
    KILN_SYM(num_inputs, "kiln_num_inputs")
    KILN_SYM(num_weights, "kiln_num_weights")
    KILN_SYM(num_outputs, "kiln_num_outputs")
    KILN_SYM(forward, "kiln_forward")
    KILN_SYM(set_wait, "kiln_set_wait")
    KILN_SYM(download_start, "kiln_download_start")
    KILN_SYM(download_wait, "kiln_download_wait")
#undef KILN_SYM
    lib->abi.quantize4 = reinterpret_cast<decltype(lib->abi.quantize4)>(dlsym(lib->handle, "kiln_quantize4"));
    lib->abi.quantize8 = reinterpret_cast<decltype(lib->abi.quantize8)>(dlsym(lib->handle, "kiln_quantize8"));
    if (lib->abi.abi_version() != KILN_ABI_VERSION) {
      MakeError(env, "E_ARTIFACT", lib->path + ": artifact ABI " + std::to_string(lib->abi.abi_version()) + ", this runtime speaks " +
                                       std::to_string(KILN_ABI_VERSION) + ": recompile the model")
          .ThrowAsJavaScriptException();
    }
  }

 private:
  std::shared_ptr<const WeightSet> bound;  // bindWeights
  std::shared_ptr<Library> lib;

  Napi::Value Target(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), lib->abi.target()); }
  Napi::Value Hash(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), lib->abi.artifact_hash()); }
  Napi::Value Counts(const Napi::CallbackInfo& info) {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("inputs", lib->abi.num_inputs());
    o.Set("weights", lib->abi.num_weights());
    o.Set("outputs", lib->abi.num_outputs());
    return o;
  }
  Napi::Value MemoryInfo(const Napi::CallbackInfo& info) {
    int64_t f = 0, t = 0;
    {
      std::lock_guard<std::mutex> g(*lib->mu);
      lib->abi.memory_info(&f, &t);
    }
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("free", Napi::Number::New(info.Env(), (double)f));
    o.Set("total", Napi::Number::New(info.Env(), (double)t));
    return o;
  }
  Napi::Value InitDevice(const Napi::CallbackInfo& info) {
    auto* w = new InitWorker(info.Env(), lib, info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 0);
    w->Queue();
    return w->Promise();
  }
  // loadWeights([{ file, offset, count, src, dst, name }], onProgress?) -> Promise<DeviceTensor[]>
  Napi::Value LoadWeights(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array a = info[0].As<Napi::Array>();
    std::vector<WeightJob> jobs;
    for (uint32_t i = 0; i < a.Length(); i++) {
      Napi::Object o = a.Get(i).As<Napi::Object>();
      WeightJob job{o.Get("file").As<Napi::String>(), (int64_t)o.Get("offset").As<Napi::Number>().DoubleValue(),
                    (int64_t)o.Get("count").As<Napi::Number>().DoubleValue(), o.Get("src").As<Napi::Number>().Int32Value(),
                    o.Get("dst").As<Napi::Number>().Int32Value(), o.Get("name").As<Napi::String>()};
      if (o.Has("quant") && o.Get("quant").IsObject()) {
        Napi::Object q = o.Get("quant").As<Napi::Object>();
        job.quant = q.Get("kind").As<Napi::Number>().Int32Value();
        job.block = (int64_t)q.Get("block").As<Napi::Number>().DoubleValue();
        job.rows = (int64_t)q.Get("rows").As<Napi::Number>().DoubleValue();
        job.cols = (int64_t)q.Get("cols").As<Napi::Number>().DoubleValue();
        job.dq = q.Get("doubleQuant").ToBoolean();
        if (q.Has("code")) {
          Napi::Array c = q.Get("code").As<Napi::Array>();
          for (uint32_t k = 0; k < 16 && k < c.Length(); k++) job.code[k] = c.Get(k).As<Napi::Number>().DoubleValue();
        }
      }
      jobs.push_back(job);
    }
    Napi::Function progress = info.Length() > 1 && info[1].IsFunction() ? info[1].As<Napi::Function>() : Napi::Function();
    auto* w = new LoadWorker(env, lib, std::move(jobs), progress);
    w->Queue();
    return w->Promise();
  }
  // download(tensor: DeviceTensor) -> Promise<ArrayBuffer>: its bytes (a quantized weight: the packed layout)
  Napi::Value Download(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(DeviceTensor::ctor.Value()) || !DeviceTensor::Unwrap(info[0].As<Napi::Object>())->buf) {
      Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
      d.Reject(MakeError(env, "E_USAGE", "download(tensor): a live DeviceTensor is required").Value());
      return d.Promise();
    }
    auto* w = new DownloadWorker(env, lib, DeviceTensor::Unwrap(info[0].As<Napi::Object>())->buf);
    w->Queue();
    return w->Promise();
  }
  // forward(weights: DeviceTensor[], inputs: ({dtype, shape, data: TypedArray} | DeviceTensor)[], toHost: boolean[])
  // bindWeights(weights): the weights every forward(null, …) uses, unwrapped once (a 7B model has
  // ~300: unwrapping them each call cost a decode step ~0.1 ms). bindWeights([]) lets them go
  // (Model.dispose, before it frees them).
  Napi::Value BindWeights(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::shared_ptr<const WeightSet> weights;
    if (!UnwrapWeights(env, info[0], weights)) return env.Undefined();
    bound = std::move(weights);
    return env.Undefined();
  }
  bool UnwrapWeights(Napi::Env env, const Napi::Value& v, std::shared_ptr<const WeightSet>& out) {
    auto set = std::make_shared<WeightSet>();
    if (!v.IsArray()) {
      MakeError(env, "E_USAGE", "weights must be an array of device tensors").ThrowAsJavaScriptException();
      return false;
    }
    Napi::Array wa = v.As<Napi::Array>();
    for (uint32_t i = 0; i < wa.Length(); i++) {
      Napi::Value e = wa.Get(i);
      if (!e.IsObject() || !e.As<Napi::Object>().InstanceOf(DeviceTensor::ctor.Value())) {
        MakeError(env, "E_USAGE", "weight " + std::to_string(i) + " is not a device tensor").ThrowAsJavaScriptException();
        return false;
      }
      DeviceTensor* t = DeviceTensor::Unwrap(e.As<Napi::Object>());
      if (!t->buf) {
        MakeError(env, "E_USAGE", "a weight was freed (the model was disposed)").ThrowAsJavaScriptException();
        return false;
      }
      set->bufs.push_back(t->buf);
      set->ptrs.push_back(t->buf->ptr);
    }
    out = std::move(set);
    return true;
  }

  // forward(weights | null, inputs, toHost): null takes the bound weights
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array ia = info[1].As<Napi::Array>(), ha = info[2].As<Napi::Array>();
    std::shared_ptr<const WeightSet> weights;
    if (info[0].IsNull()) {
      if ((!bound || bound->bufs.empty()) && lib->abi.num_weights() > 0) {
        Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
        d.Reject(MakeError(env, "E_USAGE", "no weights are bound (the model was disposed)").Value());
        return d.Promise();
      }
      weights = bound;
    } else {
      if (!UnwrapWeights(env, info[0], weights)) {
        // the error UnwrapWeights raised, as the rejection (forward always answers with a promise)
        Napi::Value err = env.GetAndClearPendingException().Value();
        Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
        d.Reject(err);
        return d.Promise();
      }
    }
    std::vector<InputArg> inputs;
    for (uint32_t i = 0; i < ia.Length(); i++) {
      Napi::Object o = ia.Get(i).As<Napi::Object>();
      InputArg a;
      if (o.InstanceOf(DeviceTensor::ctor.Value())) {
        DeviceTensor* t = DeviceTensor::Unwrap(o);
        if (!t->buf) {
          Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
          d.Reject(MakeError(env, "E_USAGE", "input " + std::to_string(i) + " is a freed device tensor").Value());
          return d.Promise();
        }
        a.dtype = t->dtype;
        a.shape = t->shape;
        a.dev = t->buf;
      } else {
        a.dtype = o.Get("dtype").As<Napi::Number>().Int32Value();
        Napi::Array s = o.Get("shape").As<Napi::Array>();
        for (uint32_t k = 0; k < s.Length(); k++) a.shape.push_back((int64_t)s.Get(k).As<Napi::Number>().DoubleValue());
        Napi::TypedArray ta = o.Get("data").As<Napi::TypedArray>();
        const uint8_t* p = (const uint8_t*)ta.ArrayBuffer().Data() + ta.ByteOffset();
        a.host.assign(p, p + ta.ByteLength());
      }
      inputs.push_back(std::move(a));
    }
    std::vector<int> to_host;
    for (uint32_t i = 0; i < ha.Length(); i++) {
      Napi::Value h = ha.Get(i);
      to_host.push_back(h.IsNumber() && h.As<Napi::Number>().Int32Value() == 2 ? 2 : h.ToBoolean() ? 1 : 0);
    }
    // options: { wait: false } returns once the work is queued (pipelined decode)
    bool wait = true;
    if (info.Length() > 3 && info[3].IsObject()) {
      Napi::Value wv = info[3].As<Napi::Object>().Get("wait");
      if (wv.IsBoolean()) wait = wv.As<Napi::Boolean>().Value();
    }
    auto* w = new ForwardWorker(env, lib, std::move(weights), std::move(inputs), std::move(to_host), wait);
    w->Queue();
    return w->Promise();
  }
};

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  exports.Set("Artifact", Artifact::Init(env));
  exports.Set("DeviceTensor", DeviceTensor::Init(env));
  exports.Set("Pending", Pending::Init(env));
  exports.Set("abiVersion", Napi::Number::New(env, KILN_ABI_VERSION));
  return exports;
}

}  // namespace

NODE_API_MODULE(kiln, InitModule)
