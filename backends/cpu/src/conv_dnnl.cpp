// 2-d convolution through oneDNN (built with -DGML_DNNL when the library is installed).
//
// oneDNN's JIT convolutions (brgconv on AVX-512) read the input and weights in blocked
// layouts (nChw16c, OIhw16i16o) and beat im2col + OpenBLAS 3-5x on a small CNN. Its own
// threads are OpenMP, whose barriers stall every op on a busy machine (the reason the
// runtime has its own pool), so oneDNN runs single-threaded here and our pool splits
// the work: each task convolves one image into one slice of output channels, with a
// primitive and packed weights of its own. The epilogue (per-channel scale/shift, then
// the activation) is oneDNN post-ops, applied while the block is in cache; the result is
// reordered back to the runtime's plain NCHW in the same task.
//
// Packed weights are kept per weight pointer and repacked when the caller announced new
// weights (`gimlet_weights_changed`, on every new weight table) or a sample of the
// weights changed (an array edited in place).
#ifdef GML_DNNL
#include <omp.h>

#include <array>
#include <dnnl.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "gimlet/cpu/conv.h"
#include "gimlet/cpu/thread_pool.h"

namespace gml {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;
constexpr auto F32 = memory::data_type::f32;

dnnl::engine& engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// oneDNN runs on the calling thread only: our pool is the parallelism. OpenMP's thread
// count is per thread, and oneDNN also sizes a primitive's work split by it when the
// primitive is created, so it is 1 while we create or execute primitives. It is restored
// afterwards: the caller's thread may run torch, which reads the same setting (and sets
// it back itself, so setting it once per thread would not last either).
class SingleThreaded {
 public:
  SingleThreaded() : prev_(omp_get_max_threads()) {
    if (prev_ != 1) omp_set_num_threads(1);
  }
  ~SingleThreaded() {
    if (prev_ != 1) omp_set_num_threads(prev_);
  }
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;

 private:
  int prev_;
};

dnnl::stream& stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

float* scratch(size_t bytes, int which) {  // per-thread buffers reused across calls
  thread_local std::array<std::vector<float>, 2> bufs;
  auto& b = bufs[size_t(which)];
  if (b.size() * sizeof(float) < bytes) b.resize(bytes / sizeof(float) + 1);
  return b.data();
}

memory::desc plain(memory::dims dims, Tag tag) { return memory::desc(dims, F32, tag); }

// One image into output channels [oc0, oc0 + ocs).
struct Slice {
  int64_t oc0 = 0, ocs = 0;
  dnnl::convolution_forward conv;
  memory::desc src, dst, wei, scratchpad;
  bool dst_plain = false;
  std::optional<dnnl::reorder> to_nchw;
  std::vector<float> packed;  // this slice's weights in `wei`'s layout
};

struct Plan {
  std::vector<Slice> slices;
  memory::desc src_user;  // plain NCHW of one image
  std::optional<dnnl::reorder> from_nchw;
  bool src_plain = true;
  std::mutex mu;  // guards repacking
  uint64_t generation = ~uint64_t(0);
  std::vector<float> sample;  // the weights' values the packing was made from
};

struct Key {
  const float* w;
  std::array<int64_t, 16> dims;
  bool operator<(const Key& o) const { return std::tie(w, dims) < std::tie(o.w, o.dims); }
};

dnnl::algorithm eltwise(Act act) {
  switch (act) {
    case Act::Relu:
      return dnnl::algorithm::eltwise_relu;
    case Act::GeluTanh:
      return dnnl::algorithm::eltwise_gelu_tanh;
    default:
      return dnnl::algorithm::eltwise_gelu_erf;
  }
}

std::unique_ptr<Plan> make_plan(int64_t c, int64_t h, int64_t wd, int64_t o, int64_t kh, int64_t kw,
                                int64_t oh, int64_t ow, const int* conv, bool mul, bool add,
                                Act act) {
  const int sh = conv[0], sw = conv[1], ph = conv[2], pw = conv[3], dh = conv[4], dw = conv[5];
  auto plan = std::make_unique<Plan>();
  plan->src_user = plain({1, c, h, wd}, Tag::nchw);
  // slices of whole 16-channel blocks, one per thread (fewer for narrow convs)
  const int64_t blocks = (o + 15) / 16;
  const int64_t n = std::max<int64_t>(1, std::min<int64_t>(num_threads(), blocks));
  const int64_t step = (blocks + n - 1) / n * 16;
  const memory::dims strides = {sh, sw}, dil = {dh - 1, dw - 1}, pl = {ph, pw};
  // the right/bottom padding that gives our (floor) output size
  const memory::dims pr = {(oh - 1) * sh + (kh - 1) * dh + 1 - h - ph,
                           (ow - 1) * sw + (kw - 1) * dw + 1 - wd - pw};
  memory::desc src_any = plain({1, c, h, wd}, Tag::any);
  for (int64_t oc0 = 0; oc0 < o; oc0 += step) {
    Slice s;
    s.oc0 = oc0;
    s.ocs = std::min(step, o - oc0);
    const memory::desc per_channel = plain({1, s.ocs, 1, 1}, Tag::nchw);
    dnnl::post_ops ops;
    if (mul) ops.append_binary(dnnl::algorithm::binary_mul, per_channel);
    if (add) ops.append_binary(dnnl::algorithm::binary_add, per_channel);
#if DNNL_VERSION_MAJOR >= 3
    if (act != Act::None) ops.append_eltwise(eltwise(act), 0.0f, 0.0f);
#else
    if (act != Act::None) ops.append_eltwise(1.0f, eltwise(act), 0.0f, 0.0f);
#endif
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // per thread: see scratch()
    const memory::desc wei_any = plain({s.ocs, c, kh, kw}, Tag::any);
    const memory::desc dst_any = plain({1, s.ocs, oh, ow}, Tag::any);
#if DNNL_VERSION_MAJOR >= 3
    dnnl::convolution_forward::primitive_desc pd(engine(), dnnl::prop_kind::forward_inference,
                                                 dnnl::algorithm::convolution_direct, src_any,
                                                 wei_any, dst_any, strides, dil, pl, pr, attr);
#else
    dnnl::convolution_forward::primitive_desc pd(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference,
                                        dnnl::algorithm::convolution_direct, src_any, wei_any,
                                        dst_any, strides, dil, pl, pr),
        attr, engine());
#endif
    s.conv = dnnl::convolution_forward(pd);
    s.src = pd.src_desc();
    s.dst = pd.dst_desc();
    s.wei = pd.weights_desc();
    s.scratchpad = pd.scratchpad_desc();
    src_any = s.src;  // every slice reads the input in the layout the first one chose
    const memory::desc dst_plain = plain({1, s.ocs, oh, ow}, Tag::nchw);
    s.dst_plain = s.dst == dst_plain;
    if (!s.dst_plain)
      s.to_nchw = dnnl::reorder::primitive_desc(engine(), s.dst, engine(), dst_plain);
    s.packed.resize(s.wei.get_size() / sizeof(float) + 1);
    plan->slices.push_back(std::move(s));
  }
  plan->src_plain = plan->slices[0].src == plan->src_user;
  if (!plan->src_plain)
    plan->from_nchw =
        dnnl::reorder::primitive_desc(engine(), plan->src_user, engine(), plan->slices[0].src);
  return plan;
}

std::vector<float> sample_of(const float* w, int64_t n) {
  std::vector<float> s;
  const int64_t step = std::max<int64_t>(1, n / 61);
  for (int64_t i = 0; i < n; i += step) s.push_back(w[i]);
  s.push_back(w[n - 1]);
  return s;
}

// (Re)pack the weights if they are new or changed since the plan last packed them.
void pack(Plan& plan, const Tensor<float>& w) {
  const int64_t n = w.shape.numel(), per_oc = n / w.shape.d[0];
  std::lock_guard<std::mutex> lock(plan.mu);
  const uint64_t gen = weights_generation();
  std::vector<float> sample = sample_of(w.data, n);
  if (gen == plan.generation && sample == plan.sample) return;
  for (Slice& s : plan.slices) {
    const memory::desc user = plain({s.ocs, w.shape.d[1], w.shape.d[2], w.shape.d[3]}, Tag::oihw);
    memory from(user, engine(), const_cast<float*>(w.data + s.oc0 * per_oc));
    memory to(s.wei, engine(), s.packed.data());
    dnnl::reorder(from, to).execute(stream(), from, to);
  }
  stream().wait();
  plan.generation = gen;
  plan.sample = std::move(sample);
}

}  // namespace

bool dnnl_conv2d(const Tensor<float>& x, const Tensor<float>& w, const float* mul, const float* add,
                 Act act, const int* conv, int groups, Tensor<float>& y) {
  if (groups != 1) return false;
  const int64_t n = x.shape.d[0], c = x.shape.d[1], h = x.shape.d[2], wd = x.shape.d[3];
  const int64_t o = w.shape.d[0], kh = w.shape.d[2], kw = w.shape.d[3];
  const int64_t oh = y.shape.d[2], ow = y.shape.d[3];
  // padding past the input's far edge that the floor division drops would be negative
  if ((oh - 1) * conv[0] + (kh - 1) * conv[4] + 1 - h - conv[2] < 0) return false;
  if ((ow - 1) * conv[1] + (kw - 1) * conv[5] + 1 - wd - conv[3] < 0) return false;
  SingleThreaded one_thread;
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<Plan>> plans;
  Key key{w.data,
          {c, h, wd, o, kh, kw, conv[0], conv[1], conv[2], conv[3], conv[4], conv[5],
           mul != nullptr, add != nullptr, int64_t(act), num_threads()}};
  Plan* plan;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto& slot = plans[key];
    if (!slot) slot = make_plan(c, h, wd, o, kh, kw, oh, ow, conv, mul, add, act);
    plan = slot.get();
  }
  pack(*plan, w);
  const int64_t p = oh * ow;
  for (int64_t b = 0; b < n; ++b) {
    float* src = const_cast<float*>(x.data + b * c * h * wd);
    Tensor<float> blocked;
    if (!plan->src_plain) {  // the input in the convolution's layout, shared by the slices
      blocked = empty<float>(shape({int64_t(plan->slices[0].src.get_size() / sizeof(float))}));
      memory from(plan->src_user, engine(), src), to(plan->slices[0].src, engine(), blocked.data);
      plan->from_nchw->execute(stream(), from, to);
      stream().wait();
      src = blocked.data;
    }
    ThreadPool::get().run(int64_t(plan->slices.size()), [&](int64_t k) {
      SingleThreaded one_thread_here;  // also on the pool's workers
      Slice& s = plan->slices[size_t(k)];
      float* out = y.data + (b * o + s.oc0) * p;
      float* dst = s.dst_plain ? out : scratch(s.dst.get_size(), 0);
      memory src_m(s.src, engine(), src), dst_m(s.dst, engine(), dst);
      memory wei_m(s.wei, engine(), s.packed.data());
      memory pad_m(s.scratchpad, engine(), scratch(s.scratchpad.get_size(), 1));
      std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src_m},
                                              {DNNL_ARG_WEIGHTS, wei_m},
                                              {DNNL_ARG_DST, dst_m},
                                              {DNNL_ARG_SCRATCHPAD, pad_m}};
      const memory::desc per_channel = plain({1, s.ocs, 1, 1}, Tag::nchw);
      int post = 0;
      if (mul)
        args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(post++) | DNNL_ARG_SRC_1] =
            memory(per_channel, engine(), const_cast<float*>(mul + s.oc0));
      if (add)
        args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(post++) | DNNL_ARG_SRC_1] =
            memory(per_channel, engine(), const_cast<float*>(add + s.oc0));
      s.conv.execute(stream(), args);
      if (!s.dst_plain) {
        memory out_m(plain({1, s.ocs, oh, ow}, Tag::nchw), engine(), out);
        s.to_nchw->execute(stream(), dst_m, out_m);
      }
      stream().wait();
    });
  }
  return true;
}

}  // namespace gml
#endif
