// The command line of msf-run-native: msf-run's flags (runtime/cli.py), parsed and checked without
// touching torch, with click's wording for the mistakes click catches.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace msf {

struct Options {
  std::vector<long> classes{330};
  uint64_t seed = 0;
  long batch = 1;  // images per class
  std::optional<std::vector<long>> steps;
  std::optional<std::vector<double>> cfg;
  std::string solver = "euler";
  double shift = 1.0;
  std::optional<std::filesystem::path> model;
  std::optional<std::string> backend;
  std::string device = "auto";
  std::string dtype = "fp32";
  bool compile = false;
  std::optional<bool> cuda_graph;
  std::filesystem::path out = "img.png";
  bool save_scales = false;
  bool help = false;
  bool version = false;

  // argv -> Options; a UsageError (exit 2) for a malformed command line, MsfError for bad values,
  // with the cheap checks of msf-run (lists, steps >= 1, negative class ids, shift) already done.
  static Options parse(int argc, char** argv);
};

std::string help_text();

}  // namespace msf
