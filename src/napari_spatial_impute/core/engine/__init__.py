"""The Tangram objective, its exact and lean engines, kernels and memory estimates."""
