"""Model lifecycle: loading and checking versions (``servable``), warming
them up (``warmup``) and keeping the repository's versions current
(``repository``). Protocol-free: the data plane and health read from it."""
