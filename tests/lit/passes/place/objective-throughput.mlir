// RUN: gimletc opt %s --pass-pipeline='place{target="b200+h100+cpu"}' | filecheck %s --check-prefix=LATENCY
// RUN: gimletc opt %s --pass-pipeline='place{target="b200+h100+cpu" objective=throughput}' | filecheck %s --check-prefix=DP
// RUN: gimletc opt %s --pass-pipeline='place{target="b200+h100+cpu" objective=throughput solver=milp}' | filecheck %s --check-prefix=DP

// Three weight-streaming matmuls (memory-bound: the B200's 8 TB/s beats the
// H100's 3.35 TB/s). For one request (latency) all three go to the B200, gpu0:
// any split only adds transfers. For a pipelined stream (throughput) the
// busiest device sets the rate, so the H100, gpu1, takes work off the B200:
// it gets the middle matmul (the B200 is revisited for the last one), the
// lowest bottleneck; dp and the exact milp agree.

func.func @main(%x: tensor<8x8192xbf16>) -> tensor<8x4096xbf16> {
  %a = gml.param "a" : tensor<8192x8192xbf16>
  %b = gml.param "b" : tensor<8192x8192xbf16>
  %c = gml.param "c" : tensor<8192x4096xbf16>
  %0 = gml.matmul %x, %a : (tensor<8x8192xbf16>, tensor<8192x8192xbf16>) -> tensor<8x8192xbf16>
  %1 = gml.matmul %0, %b : (tensor<8x8192xbf16>, tensor<8192x8192xbf16>) -> tensor<8x8192xbf16>
  %2 = gml.matmul %1, %c : (tensor<8x8192xbf16>, tensor<8192x4096xbf16>) -> tensor<8x4096xbf16>
  func.return %2 : tensor<8x4096xbf16>
}

// LATENCY:      gml.placement = "dp/latency"
// LATENCY:      %0 = gml.matmul %x, %a {gml.device = "gpu0"} :
// LATENCY-NEXT: %1 = gml.matmul %0, %b {gml.device = "gpu0"} :
// LATENCY-NEXT: %2 = gml.matmul %1, %c {gml.device = "gpu0"} :

// DP:      gml.placement = "{{dp|milp}}/throughput"
// DP:      %0 = gml.matmul %x, %a {gml.device = "gpu0"} :
// DP-NEXT: %1 = gml.matmul %0, %b {gml.device = "gpu1"} :
// DP-NEXT: %2 = gml.matmul %1, %c {gml.device = "gpu0"} :

