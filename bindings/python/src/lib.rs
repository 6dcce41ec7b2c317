//! The Python binding of memdb's embedded reader: `memdb.Reader` (the `_memdb`
//! extension module; `python/memdb/__init__.py` re-exports it with its type stubs).
//! Lookups keep the GIL (they take well under a microsecond); opening, `wait_for`,
//! `refresh` and `close` release it, so other Python threads run while they wait or map.

use std::path::PathBuf;
use std::time::Duration;

use memdb::reader::{Error, Follow, Options};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

pyo3::create_exception!(
    _memdb,
    MemdbError,
    PyException,
    "Base of every memdb error."
);
pyo3::create_exception!(
    _memdb,
    NotFoundError,
    MemdbError,
    "The data directory does not exist."
);
pyo3::create_exception!(
    _memdb,
    NotMemdbError,
    MemdbError,
    "The path is not a memdb data directory."
);
pyo3::create_exception!(
    _memdb,
    CorruptError,
    MemdbError,
    "The published files failed validation (the last good state keeps answering)."
);
pyo3::create_exception!(
    _memdb,
    NotReadyError,
    MemdbError,
    "Nothing is published in the directory yet."
);
pyo3::create_exception!(_memdb, WaitTimeoutError, MemdbError, "wait_for timed out.");
pyo3::create_exception!(
    _memdb,
    WordError,
    MemdbError,
    "The text is not exactly one word under the leader's tokenizer."
);

fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::NotFound(_) => NotFoundError::new_err(msg),
        Error::NotMemdb(_) => NotMemdbError::new_err(msg),
        Error::Io { .. } => MemdbError::new_err(msg),
        Error::Corrupt(_) => CorruptError::new_err(msg),
        Error::NotReady(_) => NotReadyError::new_err(msg),
        Error::Timeout { .. } => WaitTimeoutError::new_err(msg),
        Error::Word { .. } => WordError::new_err(msg),
    }
}

/// A reader of a memdb leader's data directory, mapped in this process.
#[pyclass(frozen, module = "memdb")]
struct Reader {
    inner: memdb::reader::Reader,
}

#[pymethods]
impl Reader {
    /// Opens the data directory `path` and follows the leader on two background
    /// threads (or, with `follow=False`, only when `refresh()` is called).
    #[new]
    #[pyo3(signature = (path, follow = true))]
    fn new(py: Python<'_>, path: PathBuf, follow: bool) -> PyResult<Self> {
        let how = if follow {
            Follow::Background
        } else {
            Follow::ByHand
        };
        let inner = py
            .detach(|| memdb::reader::Reader::open_with(Options::new(path), how))
            .map_err(to_py)?;
        Ok(Reader { inner })
    }

    /// The count of `word`, normalised as the leader counts it.
    fn count(&self, word: &str) -> PyResult<u64> {
        self.inner.count(word).map_err(to_py)
    }

    /// The count of `word` exactly as written.
    fn count_raw(&self, word: &str) -> PyResult<u64> {
        self.inner.count_raw(word).map_err(to_py)
    }

    /// The counts of `words`, in order, from one state.
    fn counts(&self, words: Vec<String>) -> PyResult<Vec<u64>> {
        self.inner.counts(&words).map_err(to_py)
    }

    /// The first `n` (word, count) pairs by count, of the words that start with
    /// `prefix`.
    #[pyo3(signature = (n = 10, prefix = ""))]
    fn top(&self, n: usize, prefix: &str) -> PyResult<Vec<(String, u64)>> {
        self.inner.top(n, prefix).map_err(to_py)
    }

    /// The mapped seq (0 before anything is mapped).
    #[getter]
    fn seq(&self) -> u64 {
        self.inner.seq()
    }

    /// The incarnation of the leader that published the mapped state (16 hex
    /// digits), or None.
    #[getter]
    fn incarnation(&self) -> Option<String> {
        self.inner.incarnation().map(|i| i.to_string())
    }

    /// Waits until a state of at least `seq` is mapped, at most `timeout` seconds;
    /// returns the seq mapped.
    #[pyo3(signature = (seq, timeout = 5.0))]
    fn wait_for(&self, py: Python<'_>, seq: u64, timeout: f64) -> PyResult<u64> {
        if !(timeout.is_finite() && timeout >= 0.0) {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "timeout must be a finite number of seconds >= 0, not {timeout}"
            )));
        }
        let t = Duration::from_secs_f64(timeout.min(1e9));
        py.detach(|| self.inner.wait_for(seq, t)).map_err(to_py)
    }

    /// Maps the published state now if it changed: True if a newer one is mapped.
    fn refresh(&self, py: Python<'_>) -> PyResult<bool> {
        py.detach(|| self.inner.refresh()).map_err(to_py)
    }

    /// Stops following (lookups go on answering from the state mapped last).
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.stop());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _t: Option<Py<PyAny>>,
        _v: Option<Py<PyAny>>,
        _tb: Option<Py<PyAny>>,
    ) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "memdb.Reader({:?}, seq={})",
            self.inner.options().data_dir,
            self.inner.seq()
        )
    }
}

#[pymodule]
fn _memdb(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Reader>()?;
    m.add("MemdbError", py.get_type::<MemdbError>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("NotMemdbError", py.get_type::<NotMemdbError>())?;
    m.add("CorruptError", py.get_type::<CorruptError>())?;
    m.add("NotReadyError", py.get_type::<NotReadyError>())?;
    m.add("WaitTimeoutError", py.get_type::<WaitTimeoutError>())?;
    m.add("WordError", py.get_type::<WordError>())?;
    Ok(())
}
