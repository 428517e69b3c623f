// Precompiled header for the LibTorch-facing library: the heavy headers every operator
// file includes. Listed here once so each translation unit parses them for free.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
