// Precompiled header for the pybind11 extension.
#pragma once
#include <torch/extension.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
