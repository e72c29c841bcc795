"""The validating front: a thin proxy on the public ports that refuses requests whose declared sizes
tritonserver 2.51 would trust (rules.py), before Triton parses them (http_front.py, grpc_front.py);
launch.py starts it in front of a server bound to loopback."""
