"""How a job runs: records, the runtime and its queue, the child process, scratch folders."""
