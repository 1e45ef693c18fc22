// RUN: not gimletc opt %s --pass-pipeline='place{target="b200+sram+cpu" pins="fc=acc0"}' 2>&1 | filecheck %s

// BUG: a pin that forces a 2.15 GB weight onto the 2 GB SRAM accelerator is
// reported as a whole-model overflow, listing devices that have room and never
// naming the pin or acc0 as the problem:
//   gimletc: error: no placement fits: the model's weights total 2.15 GB;
//   devices hold gpu0 180.00 GB, acc0 2.00 GB, cpu0 1024.00 GB
// Expected (docs/placement.md: "the device that overflows and by how much"),
// e.g. check_memory's "model does not fit: acc0 needs 2.15 GB of weights plus
// activations but holds 2.00 GB (over by 147.61 MB)".

func.func @main(%x: tensor<1x32768xbf16>) -> tensor<1x32768xbf16> {
  %w = gml.param "w" : tensor<32768x32768xbf16>
  %0 = gml.matmul %x, %w : (tensor<1x32768xbf16>, tensor<32768x32768xbf16>) -> tensor<1x32768xbf16> loc("fc"("model.py":3:0))
  func.return %0 : tensor<1x32768xbf16>
}

// CHECK:     gimletc: error: {{.*}}acc0{{.*}}over by 147.61 MB
// CHECK-NOT: builtin.module
