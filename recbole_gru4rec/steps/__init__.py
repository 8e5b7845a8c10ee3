"""GRU4RecPaper's training-step backends, one module each, all making the same updates (tested):

* :mod:`.autograd`: the reference, the model's own forward and loss through autograd;
* :mod:`.fused`: the same step written out by hand (forward, backward, Adagrad update), in torch;
* :mod:`.cpp`: the fused step's arithmetic in C++ (``cpp_step.cpp``), many steps per call.

They share :class:`.state.SessionState` (the hidden state carried between steps) and :mod:`.activations`.
"""
