"""msf-run-native: the C++ runner of AOTInductor exports (CMakeLists.txt at the repository root,
sources in this folder, docs/NATIVE.md). `python -m runtime.native.build` finds or builds it."""
