"""Reading, validation and atomic writing of AnnData files; the result file's contract."""
