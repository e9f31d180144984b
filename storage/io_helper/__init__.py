"""The I/O helper process of a pre-label run: the fetch and import stage bodies run in a child process
(:mod:`storage.io_helper.process` on the flow's side, :mod:`storage.io_helper.worker` in the child), so their Python
does not take the GIL from the model thread. The Prefect tasks (retries, states, logs) stay in the flow."""
