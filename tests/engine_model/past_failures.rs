//! The cases proptest shrank past failures of the engine model to, as the comments of
//! `engine_model.proptest-regressions` give them: the seeds there replay other cases once
//! `op()` draws differently (an operation added), these replay the same ones for good.

use super::*;

/// Each past failure's configuration and operations, with the seed it was saved under.
pub(super) fn past_failures() -> Vec<(&'static str, Config, Vec<Op>)> {
    vec![
        (
            "150189b96e0b",
            Config {
                max_dirty: None,
                remote: false,
            },
            vec![
                Op::Checkpoint {
                    fault: Fault::LostAnswer,
                    when: When::AfterCut,
                    during: vec![],
                },
                Op::Takeover,
            ],
        ),
        (
            "5c028d989864",
            Config {
                max_dirty: Some(4),
                remote: false,
            },
            vec![
                Op::Restore,
                Op::Takeover,
                Op::Data(
                    DataOp::Write {
                        file: 2,
                        offset: 333323,
                        len: 263,
                        byte: 96,
                    },
                    Fault::Upload,
                ),
                Op::Checkpoint {
                    fault: Fault::None,
                    when: When::AfterUpload,
                    during: vec![
                        DataOp::Truncate {
                            file: 1,
                            size: 633079,
                        },
                        DataOp::Write {
                            file: 1,
                            offset: 301146,
                            len: 16888,
                            byte: 25,
                        },
                        DataOp::Write {
                            file: 2,
                            offset: 551435,
                            len: 7010,
                            byte: 197,
                        },
                    ],
                },
            ],
        ),
        (
            "2ab8251f2aa7",
            Config {
                max_dirty: Some(4),
                remote: false,
            },
            vec![
                Op::Data(
                    DataOp::Write {
                        file: 0,
                        offset: 14934,
                        len: 1451,
                        byte: 0,
                    },
                    Fault::None,
                ),
                Op::Data(
                    DataOp::Write {
                        file: 0,
                        offset: 0,
                        len: 1,
                        byte: 0,
                    },
                    Fault::None,
                ),
                Op::Checkpoint {
                    fault: Fault::None,
                    when: When::AfterCut,
                    during: vec![
                        DataOp::Write {
                            file: 0,
                            offset: 39202,
                            len: 3374,
                            byte: 16,
                        },
                        DataOp::Write {
                            file: 0,
                            offset: 221464,
                            len: 5305,
                            byte: 118,
                        },
                    ],
                },
            ],
        ),
        (
            "12e3033d97ef",
            Config {
                max_dirty: None,
                remote: false,
            },
            vec![
                Op::Checkpoint {
                    fault: Fault::Commit,
                    when: When::AfterUpload,
                    during: vec![
                        DataOp::Write {
                            file: 0,
                            offset: 222170,
                            len: 51,
                            byte: 139,
                        },
                        DataOp::Truncate {
                            file: 2,
                            size: 22172,
                        },
                        DataOp::Write {
                            file: 2,
                            offset: 37944,
                            len: 1455,
                            byte: 203,
                        },
                    ],
                },
                Op::Data(
                    DataOp::Write {
                        file: 0,
                        offset: 763490,
                        len: 20591,
                        byte: 163,
                    },
                    Fault::Upload,
                ),
                Op::Checkpoint {
                    fault: Fault::None,
                    when: When::AfterUpload,
                    during: vec![
                        DataOp::Truncate {
                            file: 2,
                            size: 128259,
                        },
                        DataOp::Write {
                            file: 0,
                            offset: 713432,
                            len: 5487,
                            byte: 245,
                        },
                    ],
                },
                Op::Data(
                    DataOp::Truncate {
                        file: 1,
                        size: 715686,
                    },
                    Fault::LostAnswer,
                ),
                Op::Data(
                    DataOp::Write {
                        file: 0,
                        offset: 674739,
                        len: 16525,
                        byte: 188,
                    },
                    Fault::None,
                ),
                Op::Data(
                    DataOp::Write {
                        file: 2,
                        offset: 92000,
                        len: 12600,
                        byte: 117,
                    },
                    Fault::None,
                ),
                Op::Data(
                    DataOp::Write {
                        file: 2,
                        offset: 11989,
                        len: 11130,
                        byte: 130,
                    },
                    Fault::Commit,
                ),
                Op::Data(
                    DataOp::Write {
                        file: 0,
                        offset: 775461,
                        len: 4814,
                        byte: 236,
                    },
                    Fault::None,
                ),
                Op::Checkpoint {
                    fault: Fault::Commit,
                    when: When::AfterUpload,
                    during: vec![],
                },
                Op::Evict,
                Op::Evict,
                Op::Checkpoint {
                    fault: Fault::None,
                    when: When::AfterCut,
                    during: vec![DataOp::Rename {
                        file: 0,
                        local: true,
                    }],
                },
                Op::Data(
                    DataOp::Truncate {
                        file: 2,
                        size: 11609,
                    },
                    Fault::Upload,
                ),
                Op::Data(
                    DataOp::Write {
                        file: 2,
                        offset: 685175,
                        len: 5739,
                        byte: 179,
                    },
                    Fault::None,
                ),
                Op::Checkpoint {
                    fault: Fault::None,
                    when: When::AfterUpload,
                    during: vec![
                        DataOp::Write {
                            file: 1,
                            offset: 89083,
                            len: 23637,
                            byte: 215,
                        },
                        DataOp::Write {
                            file: 2,
                            offset: 647305,
                            len: 4637,
                            byte: 153,
                        },
                        DataOp::Punch {
                            file: 0,
                            offset: 418595,
                            len: 5114,
                        },
                    ],
                },
                Op::Data(
                    DataOp::Rename {
                        file: 1,
                        local: true,
                    },
                    Fault::None,
                ),
                Op::Data(
                    DataOp::Rename {
                        file: 0,
                        local: true,
                    },
                    Fault::None,
                ),
                Op::Checkpoint {
                    fault: Fault::Commit,
                    when: When::AfterCut,
                    during: vec![DataOp::Truncate {
                        file: 1,
                        size: 203119,
                    }],
                },
                Op::Read {
                    file: 0,
                    offset: 657533,
                    len: 166880,
                },
                Op::Crash,
                Op::Evict,
                Op::Restore,
                Op::Checkpoint {
                    fault: Fault::None,
                    when: When::AfterCut,
                    during: vec![
                        DataOp::Write {
                            file: 0,
                            offset: 454507,
                            len: 9391,
                            byte: 176,
                        },
                        DataOp::Write {
                            file: 2,
                            offset: 540816,
                            len: 14339,
                            byte: 53,
                        },
                        DataOp::Truncate {
                            file: 0,
                            size: 714582,
                        },
                    ],
                },
                Op::Data(
                    DataOp::Truncate {
                        file: 0,
                        size: 470721,
                    },
                    Fault::None,
                ),
                Op::Evict,
                Op::Data(
                    DataOp::Truncate {
                        file: 1,
                        size: 179196,
                    },
                    Fault::None,
                ),
                Op::Data(
                    DataOp::Rename {
                        file: 0,
                        local: true,
                    },
                    Fault::Upload,
                ),
                Op::Checkpoint {
                    fault: Fault::LostAnswer,
                    when: When::AfterUpload,
                    during: vec![DataOp::Write {
                        file: 1,
                        offset: 204939,
                        len: 14050,
                        byte: 234,
                    }],
                },
            ],
        ),
        (
            "d8087ac607e6",
            Config {
                max_dirty: Some(4),
                remote: false,
            },
            vec![
                Op::Data(
                    DataOp::Write {
                        file: 2,
                        offset: 375373,
                        len: 633,
                        byte: 0,
                    },
                    Fault::None,
                ),
                Op::Data(
                    DataOp::Write {
                        file: 0,
                        offset: 0,
                        len: 16385,
                        byte: 0,
                    },
                    Fault::None,
                ),
                Op::Data(
                    DataOp::Truncate {
                        file: 0,
                        size: 16385,
                    },
                    Fault::None,
                ),
                Op::Data(
                    DataOp::Write {
                        file: 0,
                        offset: 0,
                        len: 1,
                        byte: 0,
                    },
                    Fault::None,
                ),
                Op::Checkpoint {
                    fault: Fault::LostAnswer,
                    when: When::AfterCut,
                    during: vec![DataOp::Rename {
                        file: 0,
                        local: true,
                    }],
                },
                Op::Data(
                    DataOp::Write {
                        file: 0,
                        offset: 2200,
                        len: 22377,
                        byte: 0,
                    },
                    Fault::None,
                ),
                Op::Data(
                    DataOp::Truncate {
                        file: 0,
                        size: 24577,
                    },
                    Fault::None,
                ),
                Op::Data(
                    DataOp::Write {
                        file: 1,
                        offset: 0,
                        len: 4,
                        byte: 0,
                    },
                    Fault::None,
                ),
            ],
        ),
        (
            "2d490bf4ec0d",
            Config {
                max_dirty: None,
                remote: true,
            },
            vec![
                Op::Checkpoint {
                    fault: Fault::None,
                    when: When::AfterCut,
                    during: vec![DataOp::Write {
                        file: 1,
                        offset: 532480,
                        len: 1,
                        byte: 0,
                    }],
                },
                Op::Data(
                    DataOp::Rename {
                        file: 1,
                        local: true,
                    },
                    Fault::None,
                ),
                Op::Crash,
                Op::Evict,
                Op::Fsync {
                    file: 1,
                    faults: vec![],
                },
            ],
        ),
        (
            "c394bdeb014e",
            Config {
                max_dirty: None,
                remote: true,
            },
            vec![
                Op::Checkpoint {
                    fault: Fault::LostAnswer,
                    when: When::AfterCut,
                    during: vec![],
                },
                Op::Gc,
                Op::Fsync {
                    file: 0,
                    faults: vec![],
                },
            ],
        ),
        (
            "030eefcd32be",
            Config {
                max_dirty: None,
                remote: false,
            },
            vec![
                Op::Data(
                    DataOp::Write {
                        file: 0,
                        offset: 0,
                        len: 1,
                        byte: 0,
                    },
                    Fault::None,
                ),
                Op::Data(
                    DataOp::Write {
                        file: 0,
                        offset: 0,
                        len: 1,
                        byte: 0,
                    },
                    Fault::None,
                ),
                Op::Checkpoint {
                    fault: Fault::LostAnswer,
                    when: When::AfterCut,
                    during: vec![],
                },
                Op::Gc,
                Op::Takeover,
            ],
        ),
        (
            "809f45009dab",
            Config {
                max_dirty: None,
                remote: false,
            },
            vec![
                Op::Data(
                    DataOp::Write {
                        file: 1,
                        offset: 212057,
                        len: 640,
                        byte: 131,
                    },
                    Fault::LostAnswer,
                ),
                Op::Checkpoint {
                    fault: Fault::None,
                    when: When::AfterUpload,
                    during: vec![
                        DataOp::Punch {
                            file: 1,
                            offset: 763932,
                            len: 3750,
                        },
                        DataOp::Punch {
                            file: 0,
                            offset: 294283,
                            len: 24112,
                        },
                    ],
                },
                Op::Data(
                    DataOp::Truncate {
                        file: 2,
                        size: 455055,
                    },
                    Fault::None,
                ),
                Op::Data(
                    DataOp::Punch {
                        file: 1,
                        offset: 121448,
                        len: 4299,
                    },
                    Fault::None,
                ),
                Op::Checkpoint {
                    fault: Fault::None,
                    when: When::AfterCut,
                    during: vec![
                        DataOp::Write {
                            file: 0,
                            offset: 299127,
                            len: 16406,
                            byte: 154,
                        },
                        DataOp::Rename {
                            file: 2,
                            local: true,
                        },
                        DataOp::Rename {
                            file: 0,
                            local: true,
                        },
                    ],
                },
                Op::Read {
                    file: 2,
                    offset: 567726,
                    len: 836685,
                },
                Op::Checkpoint {
                    fault: Fault::LostAnswer,
                    when: When::AfterCut,
                    during: vec![DataOp::Write {
                        file: 1,
                        offset: 78222,
                        len: 19265,
                        byte: 139,
                    }],
                },
                Op::Gc,
                Op::Data(DataOp::Truncate { file: 2, size: 0 }, Fault::None),
                Op::Checkpoint {
                    fault: Fault::LostAnswer,
                    when: When::AfterUpload,
                    during: vec![DataOp::Write {
                        file: 1,
                        offset: 770251,
                        len: 1853,
                        byte: 41,
                    }],
                },
                Op::Gc,
                Op::Read {
                    file: 1,
                    offset: 183758,
                    len: 375680,
                },
                Op::Checkpoint {
                    fault: Fault::None,
                    when: When::AfterCut,
                    during: vec![
                        DataOp::Write {
                            file: 2,
                            offset: 183988,
                            len: 20566,
                            byte: 231,
                        },
                        DataOp::Write {
                            file: 2,
                            offset: 438853,
                            len: 12280,
                            byte: 63,
                        },
                    ],
                },
                Op::Gc,
                Op::Checkpoint {
                    fault: Fault::None,
                    when: When::AfterUpload,
                    during: vec![DataOp::Write {
                        file: 1,
                        offset: 65014,
                        len: 6773,
                        byte: 185,
                    }],
                },
                Op::Read {
                    file: 2,
                    offset: 538956,
                    len: 260725,
                },
                Op::Read {
                    file: 1,
                    offset: 146581,
                    len: 942864,
                },
                Op::Checkpoint {
                    fault: Fault::LostAnswer,
                    when: When::AfterUpload,
                    during: vec![
                        DataOp::Truncate {
                            file: 0,
                            size: 87110,
                        },
                        DataOp::Rename {
                            file: 0,
                            local: false,
                        },
                    ],
                },
                Op::Checkpoint {
                    fault: Fault::Upload,
                    when: When::AfterUpload,
                    during: vec![
                        DataOp::Write {
                            file: 1,
                            offset: 384674,
                            len: 19482,
                            byte: 47,
                        },
                        DataOp::Truncate {
                            file: 2,
                            size: 41458,
                        },
                        DataOp::Rename {
                            file: 1,
                            local: true,
                        },
                    ],
                },
                Op::Data(
                    DataOp::Truncate {
                        file: 1,
                        size: 770535,
                    },
                    Fault::None,
                ),
                Op::Data(
                    DataOp::Write {
                        file: 2,
                        offset: 98915,
                        len: 17066,
                        byte: 13,
                    },
                    Fault::None,
                ),
                Op::Evict,
                Op::Data(
                    DataOp::Write {
                        file: 2,
                        offset: 71247,
                        len: 272,
                        byte: 208,
                    },
                    Fault::LostAnswer,
                ),
                Op::Evict,
                Op::Evict,
                Op::Checkpoint {
                    fault: Fault::None,
                    when: When::AfterUpload,
                    during: vec![
                        DataOp::Write {
                            file: 2,
                            offset: 629962,
                            len: 21593,
                            byte: 139,
                        },
                        DataOp::Write {
                            file: 2,
                            offset: 671017,
                            len: 8211,
                            byte: 231,
                        },
                        DataOp::Write {
                            file: 2,
                            offset: 133053,
                            len: 6847,
                            byte: 111,
                        },
                    ],
                },
                Op::Checkpoint {
                    fault: Fault::None,
                    when: When::AfterCut,
                    during: vec![],
                },
                Op::Takeover,
            ],
        ),
        (
            "7abf44269a26",
            Config {
                max_dirty: None,
                remote: false,
            },
            vec![
                Op::Checkpoint {
                    fault: Fault::None,
                    when: When::AfterCut,
                    during: vec![DataOp::Write {
                        file: 2,
                        offset: 547935,
                        len: 12653,
                        byte: 1,
                    }],
                },
                Op::CrashIn(DataOp::Punch {
                    file: 2,
                    offset: 527852,
                    len: 20084,
                }),
            ],
        ),
    ]
}
