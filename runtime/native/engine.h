// The engine seam: one class per backend, each loads one artifact and runs a batch of named tensors
// (the C++ twin of runtime/engines.py's Engine). Names, shapes and batch ranges come from the
// manifest entry. A TensorRT backend would be a second subclass (docs/NATIVE.md says what it needs).
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>

#include "manifest.h"

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace msf {

using Tensors = std::map<std::string, at::Tensor>;

class Engine {
 public:
  Engine(const Manifest& manifest, const Entry& entry, c10::Device device)
      : manifest_(manifest), entry_(entry), device_(device) {}
  virtual ~Engine() = default;
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Checks the feeds against the entry (names, batch range) and runs; a decoder given more images
  // than its exported maximum runs in chunks, as runtime/backend_common.py does.
  Tensors run(const Tensors& feeds);

  const Entry& entry() const { return entry_; }
  c10::Device device() const { return device_; }
  // May run() be recorded into a CUDA graph (device work on the current stream, no host sync)?
  virtual bool capturable() const = 0;

 protected:
  // Inputs in the manifest's order; returns the outputs in the manifest's order.
  virtual std::vector<at::Tensor> run_ordered(std::vector<at::Tensor> inputs) = 0;

  const Manifest& manifest_;
  const Entry& entry_;
  c10::Device device_;

 private:
  Tensors run_checked(const Tensors& feeds);
};

// An AOTInductor package (.pt2) from `msf-export --engine aoti`, through torch's AOTIModelPackageLoader.
class AotiEngine final : public Engine {
 public:
  AotiEngine(const Manifest& manifest, const Entry& entry, c10::Device device);
  ~AotiEngine() override;
  bool capturable() const override { return device_.is_cuda(); }

 private:
  std::vector<at::Tensor> run_ordered(std::vector<at::Tensor> inputs) override;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

}  // namespace msf
