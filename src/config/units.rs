//! Durations (`ms`, `s`, `m`, `h`) and sizes (`B`, `kB`, `KiB`, `MB`, `MiB`, `GB`).
