"""devtools/profile_cluster.py: each py-spy sample goes to its innermost frame in the product's packages."""

from devtools.profile_cluster import attribute

LOOP = "Runner.run (asyncio/runners.py:118)"
WRAPPER = "rpc.<locals>.unary_wrapper (exchange/errors.py:204)"
HANDLER = "PeerRPCs.BroadcastOrderStream (exchange/node/peer_rpcs.py:59)"


def test_a_sample_goes_to_its_innermost_product_frame_whether_paths_are_relative_or_absolute() -> None:
    raw = "\n".join([
        f"{LOOP};{WRAPPER};{HANDLER};entry_mac (exchange/entry_signing.py:17) 3",
        f"{LOOP};{WRAPPER};{HANDLER};FromString (google/protobuf/message.py:1) 5",
        f"{LOOP};{WRAPPER};PeerRPCs.BroadcastOrderStream (/srv/p/exchange/node/peer_rpcs.py:59) 2",
        f"{LOOP};Engine.apply (exchange/engine/engine.py:72) 7",
        f"{LOOP};_write (grpc/aio/_call.py:9) 1",
    ])
    assert attribute(raw) == {
        "exchange/entry_signing.py:entry_mac": 3,
        "exchange/node/peer_rpcs.py:PeerRPCs.BroadcastOrderStream": 7,
        "exchange/engine/engine.py:Engine.apply": 7,
        "aio/_call.py:_write": 1,
    }
