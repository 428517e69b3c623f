// all_to_all_v with autograd: the backward of an exchange is the reverse exchange (send
// and receive splits swapped) of the gradients.
//
// Note [One node for several tensors]
// Each backward exchange is a collective: every rank of the group must run the backward
// exchanges in the same order. Tensors exchanged together in forward (the token rows and
// their routing weights) are therefore one autograd node: its backward exchanges all of
// their gradients at once, in the order of `inputs`, whatever order the autograd engine
// would have picked for separate nodes. Every rank must build the same graph: the same
// tensors requiring grad (a rank with zero rows still takes part with empty tensors).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "switchyard/comm/communicator.h"

namespace switchyard::dispatch {

// outputs[i] = group.all_to_all_v(inputs[i], send_splits, recv_splits) for 1 or 2 inputs; differentiable
// w.r.t. every input. Undefined incoming gradients are exchanged as zeros.
std::vector<at::Tensor> all_to_all_v_autograd(comm::Communicator group,
                                              const std::vector<at::Tensor>& inputs,
                                              const std::vector<int64_t>& send_splits,
                                              const std::vector<int64_t>& recv_splits);

}  // namespace switchyard::dispatch
