// RUN: gimletc opt %s --pass-pipeline=canonicalize | filecheck %s

// An op whose operands are all gml.constant is replaced by one gml.constant
// holding the value the op computes; folding repeats through chains and the
// now-dead inputs are removed. An op with a non-constant operand stays.

func.func @main(%x: tensor<3xf32>) -> (tensor<3xf32>, tensor<2x2xf32>, tensor<3xi1>, tensor<2xi64>, tensor<3xf32>) {
  %a = gml.constant dense<[1.0, 2.0, 3.0]> : tensor<3xf32>
  %b = gml.constant dense<[10.0, 20.0, 30.0]> : tensor<3xf32>
  %0 = gml.add %a, %b : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  %1 = gml.mul %0, %a : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  %m = gml.constant dense<[[1.0, 2.0], [3.0, 4.0]]> : tensor<2x2xf32>
  %2 = gml.matmul %m, %m : (tensor<2x2xf32>, tensor<2x2xf32>) -> tensor<2x2xf32>
  %t = gml.constant dense<[10.0, 40.0, 20.0]> : tensor<3xf32>
  %3 = gml.gt %0, %t : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xi1>
  %i = gml.constant dense<[7, -3]> : tensor<2xi64>
  %j = gml.constant dense<2> : tensor<2xi64>
  %4 = gml.sub %i, %j : (tensor<2xi64>, tensor<2xi64>) -> tensor<2xi64>
  %5 = gml.add %x, %a : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  func.return %1, %2, %3, %4, %5 : tensor<3xf32>, tensor<2x2xf32>, tensor<3xi1>, tensor<2xi64>, tensor<3xf32>
}

// CHECK-LABEL: func.func @main
// CHECK-NEXT:    %a = gml.constant dense<[1.000000e+00, 2.000000e+00, 3.000000e+00]> : tensor<3xf32>
// CHECK-NEXT:    %0 = gml.constant dense<[1.100000e+01, 4.400000e+01, 9.900000e+01]> : tensor<3xf32>
// CHECK-NEXT:    %1 = gml.constant dense<{{\[\[}}7.000000e+00, 1.000000e+01], [1.500000e+01, 2.200000e+01{{\]\]}}> : tensor<2x2xf32>
// CHECK-NEXT:    %2 = gml.constant dense<[true, false, true]> : tensor<3xi1>
// CHECK-NEXT:    %3 = gml.constant dense<[5, -5]> : tensor<2xi64>
// CHECK-NEXT:    %4 = gml.add %x, %a : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
// CHECK-NEXT:    func.return %0, %1, %2, %3, %4 : tensor<3xf32>, tensor<2x2xf32>, tensor<3xi1>, tensor<2xi64>, tensor<3xf32>
// CHECK-NEXT:  }
