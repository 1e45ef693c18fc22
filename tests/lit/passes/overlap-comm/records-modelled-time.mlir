// RUN: gimletc opt %s --split-input-file --pass-pipeline=outline-segments,insert-comm,overlap-comm | filecheck %s

// overlap-comm records the modelled time of the program (compiler/placement/schedule.py)
// before and after making transfers asynchronous, as f64 module attributes.
// In the first chunk the send of %0 can start before exp runs, so the two
// differ; the second never leaves the host: nothing to overlap, they are equal.

builtin.module attributes {gml.target = "h100+cpu"} {
  func.func @main(%x: tensor<1024x1024xf32>) -> tensor<1024x1024xf32> {
    %0 = gml.neg %x {gml.device = "cpu0"} : tensor<1024x1024xf32>
    %1 = gml.exp %0 {gml.device = "cpu0"} : tensor<1024x1024xf32>
    %2 = gml.relu %x {gml.device = "gpu0"} : tensor<1024x1024xf32>
    %3 = gml.add %2, %0 {gml.device = "gpu0"} : (tensor<1024x1024xf32>, tensor<1024x1024xf32>) -> tensor<1024x1024xf32>
    %4 = gml.mul %3, %1 {gml.device = "cpu0"} : (tensor<1024x1024xf32>, tensor<1024x1024xf32>) -> tensor<1024x1024xf32>
    func.return %4 : tensor<1024x1024xf32>
  }
}

// CHECK:     builtin.module attributes {gml.target = "h100+cpu", gml.modelled_s_before_overlap = [[BEFORE:[0-9.e+-]+]] : f64,
// CHECK-NOT: gml.modelled_s_after_overlap = [[BEFORE]]
// CHECK:     gml.modelled_s_after_overlap = {{[0-9.e+-]+}} : f64} {

// -----

builtin.module attributes {gml.target = "h100+cpu"} {
  func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
    %0 = gml.neg %x {gml.device = "cpu0"} : tensor<4xf32>
    func.return %0 : tensor<4xf32>
  }
}

// CHECK:      // -----
// CHECK-NEXT: builtin.module attributes {gml.target = "h100+cpu", gml.modelled_s_before_overlap = [[T:[0-9.e+-]+]] : f64, gml.modelled_s_after_overlap = [[T]] : f64} {
