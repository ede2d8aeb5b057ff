"""`rerank-bench`: an OVMS-style load client for the rerank API and a same-machine comparison harness."""
