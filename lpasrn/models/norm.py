"""BatchNorm that normalises in fp32 whatever the dtype of its input and parameters.

Why: under DeepSpeed bf16/fp16 the parameters are cast to 16 bits while the running statistics stay
fp32 buffers, and PyTorch's batch_norm refuses that mix on CPU ("expected scalar type BFloat16 but
found Float"). Statistics of a batch are also better computed in fp32 (variance of 16-bit values
loses most of its bits). Same parameters, buffers and state-dict keys as nn.BatchNorm2d.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and (self.weight is None or self.weight.dtype == torch.float32):
            return super().forward(x)
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        use_batch_stats = self.training or self.running_mean is None
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d does
                momentum = 1.0 / float(self.num_batches_tracked)
        out = F.batch_norm(x.float(), self.running_mean, self.running_var,
                           None if self.weight is None else self.weight.float(),
                           None if self.bias is None else self.bias.float(),
                           use_batch_stats, momentum, self.eps)
        return out.to(x.dtype)
