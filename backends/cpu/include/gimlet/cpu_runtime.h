// gimlet CPU backend runtime: what every generated kernel file includes.
//
// Every tensor is contiguous row-major; `Tensor::own` keeps its buffer alive, so reshapes
// alias their input and buffers are released when their last user is done. The headers
// hold templates and the small inline functions loops call; what is neither (the thread
// pool, the buffer pool, the BLAS and convolution wrappers) is in ../../src/*.cpp, compiled
// once per flags into the runtime library that every kernel library links.
#pragma once
#include <cstdio>
#include <exception>

#include "gimlet/cpu/attention.h"
#include "gimlet/cpu/conv.h"
#include "gimlet/cpu/data.h"
#include "gimlet/cpu/half.h"
#include "gimlet/cpu/matmul.h"
#include "gimlet/cpu/nn.h"
#include "gimlet/cpu/profile.h"
#include "gimlet/cpu/scalar_math.h"
#include "gimlet/cpu/tensor.h"
#include "gimlet/cpu/thread_pool.h"

// Outputs are malloc'd by `gml::emit_output`; the caller returns each one here.
extern "C" void gimlet_free(void* p);
// Called whenever the weights passed to the kernels may have changed (see tensor.h).
extern "C" void gimlet_weights_changed();
