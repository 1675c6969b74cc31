// The tab's profile in IndexedDB: samples (features and a small thumbnail), the class
// table, parameters, optimizer state and step as one checkpoint record. Every change
// is one IndexedDB transaction (all of it is written or none of it), so a closed tab
// or a crash never leaves a half-written profile; a reload continues from the last
// committed state.
//
//   profiles     key: profile name   {name, bundle, classes: [names], created, openSet}
//   samples      key: id (auto)      {profile, label, features: ArrayBuffer, thumbnail: Blob, created}
//                index "profile"
//   checkpoints  key: profile name   {columns, trained, step, values: {name: {data, dims}}, saved}

import { EdgetuneError } from "./manifest.js";

const DB = "edgetune";
// Atomic either way; "relaxed" skips the flush to disk that "strict" waits for (up to a
// second per transaction on a busy disk), so only a power cut could lose the latest
// changes, never leave half of one.
const RELAXED = { durability: "relaxed" };
const DB_VERSION = 1;

const promised = (request) => new Promise((resolve, reject) => {
  request.onsuccess = () => resolve(request.result);
  request.onerror = () => reject(request.error);
});

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new EdgetuneError("the profile's transaction was aborted", "storage"));
  });
}

export function openDatabase(name = DB) {
  const request = indexedDB.open(name, DB_VERSION);
  request.onupgradeneeded = () => {
    const db = request.result;
    if (!db.objectStoreNames.contains("profiles")) db.createObjectStore("profiles", { keyPath: "name" });
    if (!db.objectStoreNames.contains("samples")) {
      db.createObjectStore("samples", { keyPath: "id", autoIncrement: true }).createIndex("profile", "profile");
    }
    if (!db.objectStoreNames.contains("checkpoints")) db.createObjectStore("checkpoints", { keyPath: "profile" });
  };
  return promised(request).catch((error) => {
    throw new EdgetuneError(`IndexedDB is not available (${error?.message}); a private window or `
      + "full disk may refuse storage", "storage");
  });
}

export class ProfileStore {
  constructor(db, name) {
    this.db = db;
    this.name = name;
  }

  /** Open (or create) the profile for bundle `bundleId`: {profile, samples, checkpoint}. */
  static async open(name, bundleId, dbName) {
    const store = new ProfileStore(await openDatabase(dbName), name);
    const tx = store.db.transaction(["profiles", "samples", "checkpoints"], "readwrite");
    const profiles = tx.objectStore("profiles");
    let profile = await promised(profiles.get(name));
    if (profile && profile.bundle !== bundleId) {
      tx.abort();
      throw new EdgetuneError(`profile ${JSON.stringify(name)} in this browser was made with another `
        + "bundle; open a new profile (Personalizer.open(url, {profile: \"other\"})) or remove this "
        + "one (Personalizer.removeProfile)", "other_bundle");
    }
    if (!profile) {
      profile = { name, bundle: bundleId, classes: [], created: Date.now() };
      profiles.put(profile);
    }
    const samples = await promised(tx.objectStore("samples").index("profile").getAll(name));
    const checkpoint = await promised(tx.objectStore("checkpoints").get(name));
    await done(tx);
    store.profile = profile;
    return { store, profile, samples, checkpoint: checkpoint ?? null };
  }

  /** Delete a profile and everything in it, in one transaction. */
  static async remove(name, dbName) {
    const db = await openDatabase(dbName);
    const tx = db.transaction(["profiles", "samples", "checkpoints"], "readwrite");
    tx.objectStore("profiles").delete(name);
    tx.objectStore("checkpoints").delete(name);
    const keys = await promised(tx.objectStore("samples").index("profile").getAllKeys(name));
    for (const key of keys) tx.objectStore("samples").delete(key);
    await done(tx);
    db.close();
  }

  /** Add samples and the class table in one transaction; the ids, in order. */
  async addSamples(rows, classes) {
    const tx = this.db.transaction(["profiles", "samples"], "readwrite", RELAXED);
    const ids = rows.map((row) => promised(tx.objectStore("samples").add({ profile: this.name, ...row })));
    tx.objectStore("profiles").put({ ...this.profile, classes });
    const result = await Promise.all(ids);
    await done(tx);
    this.profile = { ...this.profile, classes };
    return result;
  }

  /** Change fields of the profile's record (e.g. {openSet: true}) in one transaction. */
  async setFields(fields) {
    const tx = this.db.transaction(["profiles"], "readwrite");
    tx.objectStore("profiles").put({ ...this.profile, ...fields });
    await done(tx);
    this.profile = { ...this.profile, ...fields };
  }

  setClasses(classes) {
    return this.setFields({ classes });
  }

  async removeSample(id) {
    const tx = this.db.transaction(["samples"], "readwrite");
    const row = await promised(tx.objectStore("samples").get(id));
    if (!row || row.profile !== this.name) {
      tx.abort();
      throw new EdgetuneError(`no sample ${id} in profile ${JSON.stringify(this.name)}`, "not_found");
    }
    tx.objectStore("samples").delete(id);
    await done(tx);
  }

  /**
   * Rename (`to` a name) or remove (`to` null) a class: its samples, the class table
   * and the checkpoint's column names change in one transaction.
   */
  async changeClass(from, to, classes) {
    const tx = this.db.transaction(["profiles", "samples", "checkpoints"], "readwrite");
    const samples = tx.objectStore("samples");
    const rows = await promised(samples.index("profile").getAll(this.name));
    for (const row of rows) {
      if (row.label !== from) continue;
      if (to === null) samples.delete(row.id);
      else samples.put({ ...row, label: to });
    }
    if (to !== null) {
      const checkpoint = await promised(tx.objectStore("checkpoints").get(this.name));
      if (checkpoint) {
        tx.objectStore("checkpoints").put({ ...checkpoint, columns: checkpoint.columns.map((c) => (c === from ? to : c)) });
      }
    }
    tx.objectStore("profiles").put({ ...this.profile, classes });
    await done(tx);
    this.profile = { ...this.profile, classes };
  }

  /** Write the parameters, optimizer state, step and column names as one record. */
  async saveCheckpoint(checkpoint) {
    const tx = this.db.transaction(["checkpoints"], "readwrite", RELAXED);
    tx.objectStore("checkpoints").put({ profile: this.name, ...checkpoint, saved: Date.now() });
    await done(tx);
  }

  close() {
    this.db.close();
  }
}
