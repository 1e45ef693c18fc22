// Micro-batch stages (tests/test_pipeline.py): cpu1 hears from cpu0 in two segments, the
// first one hop after cpu0, the second two (it also waits for cpu2), so both are given
// the larger lag and cpu1 meets cpu0's channels in program order at matching steps.
builtin.module {
  func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
    %0 = comm.isend %x to "cpu1" channel 0 via "pcie" : tensor<4xf32>
    %1 = comm.isend %x to "cpu2" channel 1 via "pcie" : tensor<4xf32>
    %2 = comm.isend %x to "cpu1" channel 3 via "pcie" : tensor<4xf32>
    %3 = comm.irecv from "cpu1" channel 5 via "pcie"
    %4 = comm.irecv from "cpu1" channel 4 via "pcie"
    gml.segment "cpu1"() : () -> () {
      %r = comm.irecv from "cpu0" channel 0 via "pcie"
      %a = comm.wait %r : tensor<4xf32>
      %b = gml.add %a, %a : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
      %s = comm.isend %b to "cpu0" channel 5 via "pcie" : tensor<4xf32>
      comm.wait %s
      gml.yield
    }
    gml.segment "cpu2"() : () -> () {
      %r = comm.irecv from "cpu0" channel 1 via "pcie"
      %a = comm.wait %r : tensor<4xf32>
      %b = gml.add %a, %a : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
      %s = comm.isend %b to "cpu1" channel 2 via "pcie" : tensor<4xf32>
      comm.wait %s
      gml.yield
    }
    gml.segment "cpu1"() : () -> () {
      %r = comm.irecv from "cpu0" channel 3 via "pcie"
      %q = comm.irecv from "cpu2" channel 2 via "pcie"
      %a = comm.wait %r : tensor<4xf32>
      %c = comm.wait %q : tensor<4xf32>
      %b = gml.add %a, %c : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
      %s = comm.isend %b to "cpu0" channel 4 via "pcie" : tensor<4xf32>
      comm.wait %s
      gml.yield
    }
    comm.wait %0
    comm.wait %1
    comm.wait %2
    %y = comm.wait %3 : tensor<4xf32>
    %z = comm.wait %4 : tensor<4xf32>
    %w = gml.add %y, %z : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
    func.return %w : tensor<4xf32>
  }
}
