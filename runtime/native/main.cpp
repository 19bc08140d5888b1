// msf-run-native: Algorithm 3 over an `msf-export --engine aoti` folder, without Python.
//
// The same flags, checks, images and stderr timing lines as `msf-run --backend aoti`
// (runtime/cli.py); see docs/NATIVE.md. Cheap checks (flags, lists, the output path, the manifest
// and its hashes, the device, the plan, classes and batch range) all run before any package is
// loaded; every error is one "Error: ..." line on stderr and a non-zero exit, and no PNG is left
// half-written (png.cpp writes to a temporary file and renames it).
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>

#include "cli.h"
#include "cuda_graph.h"
#include "engine.h"
#include "error.h"
#include "manifest.h"
#include "png.h"
#include "sampler.h"

#ifndef MSF_VERSION
#define MSF_VERSION "unknown"
#endif
#ifndef MSF_TORCH_VERSION
#define MSF_TORCH_VERSION "unknown"
#endif

namespace msf {
namespace {

namespace fs = std::filesystem;
using steady = std::chrono::steady_clock;

double since(steady::time_point t0) { return std::chrono::duration<double>(steady::now() - t0).count(); }

bool cuda_available() {
  return c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA) &&
         c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->deviceCount() > 0;
}

// runtime.engines.resolve_device: auto -> cuda when there is one, else cpu.
c10::Device resolve_device(const std::string& device) {
  if (device == "auto") return cuda_available() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  if (device == "cuda") {
#ifndef MSF_WITH_CUDA
    throw MsfError("--device cuda but this msf-run-native was built without CUDA (libtorch " MSF_TORCH_VERSION
                   "); use --device cpu, or rebuild with -DMSF_WITH_CUDA=ON against a CUDA libtorch");
#endif
    if (!cuda_available())
      throw MsfError("--device cuda but this torch (" MSF_TORCH_VERSION ") sees no CUDA GPU; use --device cpu");
    return c10::Device(c10::kCUDA, 0);
  }
  return c10::Device(c10::kCPU);
}

std::string fixed3(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

// The class ids as a (B,) int64 tensor on the device.
at::Tensor class_tensor(const std::vector<long>& ids, c10::Device dev) {
  at::Tensor y = at::empty({static_cast<int64_t>(ids.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(ids.begin(), ids.end(), y.data_ptr<int64_t>());
  return y.to(dev);
}

// Images of one request, its chunks merged: runtime.pipeline.Generation.
struct Generation {
  at::Tensor image;
  std::vector<at::Tensor> scales;
  std::vector<StageTiming> timings;  // summed per stage over the chunks
  double total_s = 0;
  size_t chunks = 0;
  bool graph = false;
  double capture_s = 0;
  std::string reason;  // why eager when a CUDA graph was asked for
};

// runtime.sampler.sample on one chunk: noise per image, Algorithm 3, timed per stage.
void sample_chunk(const std::vector<Stage>& stages, Engine& decoder, const std::vector<StageConfig>& cfgs,
                  const std::vector<long>& y, const std::vector<uint64_t>& seeds, const Plan& plan, bool save_scales,
                  c10::Device dev, std::vector<CascadeOutput>& outs, std::vector<std::vector<StageTiming>>& timings,
                  double& total_s) {
  Clock clock(dev);
  const auto t0 = steady::now();
  const std::vector<at::Tensor> noises = make_noise(cfgs, seeds, dev);
  outs.push_back(run_cascade(stages, decoder, class_tensor(y, dev), noises, time_grids(plan, dev), plan, save_scales,
                             &clock));
  clock.sync();
  total_s += since(t0);
  timings.push_back(clock.records());
}

#ifdef MSF_WITH_CUDA
// runtime.graphs.CascadeRunner.sample in graph mode: one record for the whole replay.
void replay_chunk(CascadeGraph& graph, const std::vector<StageConfig>& cfgs, const std::vector<long>& y,
                  const std::vector<uint64_t>& seeds, c10::Device dev, std::vector<CascadeOutput>& outs,
                  std::vector<std::vector<StageTiming>>& timings, double& total_s) {
  synchronize(dev);
  const auto t0 = steady::now();
  const std::vector<at::Tensor> noises = make_noise(cfgs, seeds, dev);
  const auto t1 = steady::now();
  outs.push_back(graph.replay(class_tensor(y, dev), noises));
  synchronize(dev);
  const double replay_s = since(t1);
  timings.push_back({{"cascade", "one CUDA graph: " + std::to_string(cfgs.size()) + " scale(s) + decode, batch " +
                                     std::to_string(y.size()),
                      replay_s, replay_s, 1}});
  total_s += since(t0);
}
#endif

// runtime.pipeline.Pipeline.generate: chunks of at most the artifacts' max batch (halved under CFG);
// each image keeps its own seed, so the images are those of one big batch.
Generation generate(const std::vector<Stage>& stages, Engine& decoder, const Manifest& manifest,
                    const std::vector<long>& ids, const std::vector<uint64_t>& seeds, const Plan& plan,
                    bool save_scales, bool use_graph, c10::Device dev) {
  std::vector<StageConfig> cfgs;
  for (const auto& s : stages) cfgs.push_back(s.cfg);
  long limit = static_cast<long>(ids.size());
  for (size_t i = 0; i < stages.size(); ++i)
    limit = std::min<long>(limit, std::max(1, manifest.stages()[i].batch.max / (plan.cfg[i] != 1.0 ? 2 : 1)));
  const long n = static_cast<long>(ids.size());
  for (long lo = 0; lo < n; lo += limit)  // every chunk size must be in range: refuse before any work
    for (size_t i = 0; i < stages.size(); ++i) {
      const long b = std::min(limit, n - lo);
      manifest.check_batch(manifest.stages()[i], plan.cfg[i] == 1.0 ? b : 2 * b);
    }
  Generation gen;
  std::vector<CascadeOutput> outs;
  std::vector<std::vector<StageTiming>> timings;
#ifdef MSF_WITH_CUDA
  std::map<long, std::unique_ptr<CascadeGraph>> graphs;  // one per chunk size, as CascadeRunner per size
#endif
  for (long lo = 0; lo < n; lo += limit) {
    const long b = std::min(limit, n - lo);
    const std::vector<long> y(ids.begin() + lo, ids.begin() + lo + b);
    const std::vector<uint64_t> s(seeds.begin() + lo, seeds.begin() + lo + b);
#ifdef MSF_WITH_CUDA
    if (use_graph && !graphs.count(b) && gen.reason.empty()) {
      const auto t0 = steady::now();
      try {
        graphs[b] = std::make_unique<CascadeGraph>(stages, decoder, b, plan, save_scales);
      } catch (const std::exception& e) {  // any capture failure means: run eager, and say why
        std::string why = e.what();
        gen.reason = "capture failed (" + why.substr(0, why.find('\n')) + ")";
      }
      gen.capture_s += since(t0);
    }
    if (graphs.count(b)) {
      replay_chunk(*graphs[b], cfgs, y, s, dev, outs, timings, gen.total_s);
      gen.graph = true;
      continue;
    }
#else
    (void)use_graph;
#endif
    sample_chunk(stages, decoder, cfgs, y, s, plan, save_scales, dev, outs, timings, gen.total_s);
  }
  gen.chunks = outs.size();
  for (const auto& chunk : timings)  // runtime.pipeline._merge: summed per stage, first-seen order
    for (const auto& t : chunk) {
      auto it = std::find_if(gen.timings.begin(), gen.timings.end(), [&](const StageTiming& m) { return m.name == t.name; });
      if (it == gen.timings.end()) it = gen.timings.insert(gen.timings.end(), {t.name, t.detail});
      it->wall_s += t.wall_s;
      it->engine_s += t.engine_s;
      it->calls += t.calls;
    }
  std::vector<at::Tensor> images;
  for (const auto& o : outs) images.push_back(o.image);
  gen.image = at::cat(images);
  for (size_t i = 0; save_scales && i < outs.front().scales.size(); ++i) {
    std::vector<at::Tensor> parts;
    for (const auto& o : outs) parts.push_back(o.scales[i]);
    gen.scales.push_back(at::cat(parts));
  }
  return gen;
}

// runtime.cli.peak_memory_line: the CPU's peak resident set, and the GPU's peak allocation by torch.
std::string peak_memory_line(c10::Device dev) {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  char buf[160];
  std::snprintf(buf, sizeof buf, "peak memory: CPU RSS %.0f MiB", usage.ru_maxrss / 1024.0);  // KiB on Linux
  std::string line = buf;
#ifdef MSF_WITH_CUDA
  if (dev.is_cuda()) {
    std::snprintf(buf, sizeof buf, ", GPU %.0f MiB allocated by torch", cuda_peak_bytes(dev) / double(1 << 20));
    line += buf;
  }
#else
  (void)dev;
#endif
  return line;
}

int run(int argc, char** argv) {
  const Options o = Options::parse(argc, argv);
  if (o.help) {
    std::cout << help_text();
    return 0;
  }
  if (o.version) {
    std::cout << "msf-run-native " MSF_VERSION " (libtorch " MSF_TORCH_VERSION ")\n";
    return 0;
  }
  PngWriter::check_output(o.out);
  if (!o.model)
    throw MsfError("--model is required: give an artifact folder from msf-export --engine aoti "
                   "(msf-run-native runs AOTInductor exports only)");
  if (!fs::is_directory(*o.model)) throw MsfError("model folder not found: " + o.model->string());
  const c10::Device dev = resolve_device(o.device);
  const std::string dev_type = dev.is_cuda() ? "cuda" : "cpu";
  if (o.backend && *o.backend != "aoti")
    throw MsfError("msf-run-native runs AOTInductor artifacts (--backend aoti); use msf-run for --backend " + *o.backend);
  if (o.compile || o.dtype != "fp32")
    throw MsfError("--dtype and --compile apply to the torch backend; a aoti artifact's precision is set by msf-export");

  // Everything that can be checked without loading a package, in msf-run's order.
  const Manifest manifest = Manifest::open(*o.model, "aoti");
  manifest.check_device(dev_type);
  manifest.check_torch(MSF_TORCH_VERSION);
  const std::vector<StageConfig> cfgs = manifest.configs();
  check_cascade(cfgs);
  // Flags first, then the model's own plan (the manifest's "sampling"), then the paper's: msf-run's order.
  const Plan plan = make_plan(cfgs, o.steps ? o.steps : manifest.plan_steps(), o.cfg ? o.cfg : manifest.plan_cfg(),
                              o.solver, o.shift);
  check_classes(cfgs, o.classes);
  std::vector<long> y;  // class-major: one grid row per class
  std::vector<uint64_t> seeds;
  for (long c : o.classes)
    for (long j = 0; j < o.batch; ++j) {
      if (o.seed > UINT64_MAX - y.size()) throw MsfError("--seed is too large: seed + image index must fit 64 bits");
      seeds.push_back(o.seed + y.size());
      y.push_back(c);
    }
  const long B = static_cast<long>(y.size());

  c10::InferenceMode inference;
  std::vector<std::unique_ptr<Engine>> engines;
  std::vector<Stage> stages;
  for (size_t i = 0; i < cfgs.size(); ++i) {
    engines.push_back(std::make_unique<AotiEngine>(manifest, manifest.stages()[i], dev));
    stages.push_back({cfgs[i], engines.back().get()});
  }
  AotiEngine decoder(manifest, manifest.decoder(), dev);
  warm_up_ops(cfgs, dev);

  bool use_graph = o.cuda_graph.value_or(dev.is_cuda());
  if (use_graph && !dev.is_cuda()) {
    std::cerr << "note: --cuda-graph needs --device cuda; running eager\n";
    use_graph = false;
  }
  const Generation gen = generate(stages, decoder, manifest, y, seeds, plan, o.save_scales, use_graph, dev);

  const long ncol = o.classes.size() > 1 ? o.batch : static_cast<long>(std::ceil(std::sqrt(static_cast<double>(B))));
  PngWriter::write(o.out, to_grid(gen.image, ncol));
  std::string written = o.out.string();
  for (size_t i = 0; i < gen.scales.size(); ++i) {
    PngWriter::write(scale_path(o.out, i), to_grid(gen.scales[i], ncol));
    written += ", " + scale_path(o.out, i).string();
  }

  if (!gen.reason.empty() && use_graph) std::cerr << "note: CUDA graph off, running eager: " << gen.reason << "\n";
  const std::string prefix = "[aoti " + dev_type + (gen.graph ? " graph" : "") + "]";
  if (gen.chunks > 1)
    std::cerr << prefix << " " << B << " images in " << gen.chunks << " chunks (the artifacts' batch range)\n";
  double engine_s = 0;
  for (const auto& r : gen.timings) {
    std::cerr << prefix << " " << r.name << " (" << r.detail << "): " << fixed3(r.wall_s) << " s, " << r.calls
              << " engine calls " << fixed3(r.engine_s) << " s\n";
    engine_s += r.engine_s;
  }
  char rate[64];
  std::snprintf(rate, sizeof rate, "%.3g", gen.total_s > 0 ? B / gen.total_s : NAN);
  std::cerr << prefix << " total: " << fixed3(gen.total_s) << " s for " << B << " image(s), " << rate
            << " images/s; engine calls " << fixed3(engine_s) << " s; overhead x"
            << fixed3(engine_s > 0 ? gen.total_s / engine_s : NAN) << "; " << peak_memory_line(dev) << "\n";
  if (gen.graph)
    std::cerr << prefix << " graph capture (once per batch size and plan): " << fixed3(gen.capture_s) << " s\n";
  const auto H = gen.image.size(-2), W = gen.image.size(-1);
  std::cout << "wrote " << written << " (" << B << " image(s) of " << W << "x" << H << ", seed " << o.seed << ")\n";
  return 0;
}

// One line, whatever the exception carried (c10 errors add a backtrace after a newline).
std::string first_line(const std::string& text) {
  std::string s = text.substr(0, text.find('\n'));
  return s.empty() ? "unknown error" : s;
}

}  // namespace
}  // namespace msf

int main(int argc, char** argv) {
  try {
    return msf::run(argc, argv);
  } catch (const msf::MsfError& e) {
    std::cerr << "Error: " << msf::first_line(e.what()) << "\n";
    return e.exit_code();
  } catch (const c10::Error& e) {
    std::cerr << "Error: " << msf::first_line(e.what_without_backtrace()) << "\n";
  } catch (const std::exception& e) {
    std::cerr << "Error: " << msf::first_line(e.what()) << "\n";
  }
  return 1;
}
