"""Reading parquet that arrived as bytes (an object store's ``get_bytes``)."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from services.common.contract.errors import StorageError


def frame_from_parquet_bytes(data: bytes, where: str) -> pd.DataFrame:
    """The DataFrame in one parquet file's bytes; ``where`` (its URI) names it in errors.

    Arrow reads from its own copy of ``data``, never from a Python object (``io.BytesIO``, or
    ``bytes`` wrapped by ``pa.py_buffer``): Arrow's worker threads then hold no Python reference
    to release after the read returns. One that drops it while the interpreter exits can no
    longer take the GIL and the process aborts with "terminate called without an active
    exception" (apache/arrow#34314); a short CLI such as ``ftlab score --eval`` did, about one
    run in six on a loaded machine. Raises StorageError for bytes that are not a readable parquet file.
    """
    sink = pa.BufferOutputStream()
    sink.write(data)
    try:
        return pq.read_table(pa.BufferReader(sink.getvalue())).to_pandas()
    except pa.ArrowException as exc:
        raise StorageError(f"{where} is not a readable parquet file: {exc}") from None
