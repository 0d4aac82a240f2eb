"""``python -m mpcache.net.proto``: regenerate the committed protobuf / gRPC modules."""
from . import regenerate

regenerate()
print("regenerated mpcache/net/proto/mpcache_pb2{,_grpc}.py from proto/mpcache.proto")
