// manifest.json of an `msf-export` artifact folder (format 1, msf_export/manifest.py): what the folder
// holds, the stage configs, tensor names and batch ranges. Reading it refuses exactly what the Python
// runtime refuses (msf_export.manifest.read_manifest / verify_files / check_batch,
// msf_train.config.ModelConfig, msf_train.checkpoint.check_cascade), with the same one-line messages.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace msf {

namespace fs = std::filesystem;

// One scale's denoiser config: the ModelConfig fields the sampler needs (MSF_PAPER.md section 3).
struct StageConfig {
  std::string name;
  int latent_size = 32;  // h_i = w_i
  int in_channels = 4;   // latent channels C
  int num_classes = 1000;
  int scale_index = 0;
  std::vector<int> scale_sizes{32};
  double residual_scale = 1.0;  // the model learned target / residual_scale

  int null_class() const { return num_classes; }  // CFG's class (DESIGN.md section 2)
  int full_size() const { return scale_sizes.back(); }
};

struct TensorSpec {
  std::string name;
  std::vector<std::string> shape;  // ints as text, or "batch"
  std::string dtype;
};

struct BatchRange {
  int min = 1, opt = 1, max = 1;
};

// One artifact: a stage's denoiser or the VAE decoder.
struct Entry {
  std::string name, kind, artifact;
  std::vector<std::pair<std::string, std::string>> files;  // file name -> sha256, as listed
  std::vector<TensorSpec> inputs, outputs;
  BatchRange batch;                   // the entry's own range, else the manifest's
  std::optional<StageConfig> config;  // denoisers only
};

class Manifest {
 public:
  // read + verify_files: what every runtime backend does first (msf_export.manifest.open_export).
  static Manifest open(const fs::path& folder, const std::string& engine);

  // The batch must lie in the entry's exported range (the decoder chunks above its max).
  void check_batch(const Entry& entry, long batch) const;
  // The stage device the packages were compiled for must be the one we run on.
  void check_device(const std::string& device) const;
  // An AOTInductor package runs only on the torch release that built it (the manifest's tools.torch).
  void check_torch(const std::string& libtorch_version) const;

  const fs::path& folder() const { return folder_; }
  fs::path path() const { return folder_ / "manifest.json"; }
  fs::path artifact(const Entry& e) const { return folder_ / e.artifact; }
  const std::string& engine() const { return engine_; }
  const std::string& device() const { return device_; }
  const std::vector<Entry>& stages() const { return stages_; }
  const Entry& decoder() const { return decoder_; }
  std::vector<StageConfig> configs() const;
  // The cascade's own sampling plan (the manifest's optional "sampling", msf_train.schema.sampling):
  // what make_plan falls back to before the paper's; empty when the model has none.
  const std::optional<std::vector<long>>& plan_steps() const { return plan_steps_; }
  const std::optional<std::vector<double>>& plan_cfg() const { return plan_cfg_; }

 private:
  void verify_files() const;
  fs::path folder_;
  std::string engine_, precision_, device_ = "cpu", torch_;
  BatchRange batch_;
  std::vector<Entry> stages_;
  Entry decoder_;
  std::optional<std::vector<long>> plan_steps_;
  std::optional<std::vector<double>> plan_cfg_;
};

// Stages must agree on classes, channels and the scale ladder, and come in scale order.
void check_cascade(const std::vector<StageConfig>& cfgs);

// Lower-case hex sha256 of a file (OpenSSL's EVP digest).
std::string sha256_file(const fs::path& path);

}  // namespace msf
