"""msf_export: ONNX, TensorRT and AOTInductor artifacts with manifests (see the export issue)."""
