`timescale 1 ps/1 ps
`define OK 12
`define INCORRECT 13

module stimulus_gen (input clk, output logic a, output logic b);
  initial begin
    repeat(100) @(posedge clk, negedge clk) {a, b} <= $random;
    #1 $finish;
  end
endmodule

module RefModule (input a, input b, output out);
  assign out = a & b;
endmodule

module tb();
  typedef struct packed { int errors; int errortime; int errors_out; int errortime_out; int clocks; } stats;
  stats stats1;
  reg clk = 0;
  initial forever #5 clk = ~clk;
  logic a, b, out_ref, out_dut;
  wire tb_match;
  stimulus_gen stim1 (.clk, .*);
  RefModule good1 (.a, .b, .out(out_ref));
  TopModule top_module1 (.a, .b, .out(out_dut));
  assign tb_match = ( { out_ref } === ( { out_ref } ^ { out_dut } ^ { out_ref } ) );
  always @(posedge clk, negedge clk) begin
    stats1.clocks++;
    if (!tb_match) begin
      if (stats1.errors == 0) stats1.errortime = $time;
      stats1.errors++;
    end
  end
  final begin
    $display("Hint: Total mismatched samples is %1d out of %1d samples\n", stats1.errors, stats1.clocks);
    $display("Simulation finished at %0d ps", $time);
    $display("Mismatches: %1d in %1d samples", stats1.errors, stats1.clocks);
  end
  initial begin
    #1000000
    $display("TIMEOUT");
    $finish();
  end
endmodule
