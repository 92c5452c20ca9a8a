# services.nixcache.bucket: the `[bucket]` table (issue 13), NARs and narinfos in an S3-compatible
# bucket shared by several appliances. The S3 credentials are handed to the service with
# LoadCredential (`s3-access-key-id`, `s3-secret-access-key`, `s3-session-token`) and rendered as the
# `*_file` keys pointing at the service's copies. docs/operations.md shows two appliances on one Garage.
{ config, lib, ... }:

let
  cfg = config.services.nixcache;
  b = cfg.bucket;
  nixcacheLib = import ../lib.nix { inherit lib; };
  nixcacheTypes = nixcacheLib.types;
  inherit (nixcacheLib) credentialsDir inStore;
  inherit (lib) mkOption types;

  # Credential name → the option giving its file.
  secretOptions = {
    s3-access-key-id = "accessKeyIdFile";
    s3-secret-access-key = "secretAccessKeyFile";
    s3-session-token = "sessionTokenFile";
  };
  secretFiles = lib.filterAttrs (_: f: f != null) (lib.mapAttrs (_: option: b.${option}) secretOptions);
  credentialFile = name: if secretFiles ? ${name} then "${credentialsDir}/${name}" else null;
in
{
  options.services.nixcache.bucket = {
    enable = lib.mkEnableOption ''
      a shared S3-compatible bucket (Garage, SeaweedFS, MinIO, AWS) as the store: every NAR the
      appliance fetches, and its narinfo, go there too, and a narinfo it does not know is asked from
      the bucket before any upstream (the `[bucket]` table)
    '';
    endpoint = mkOption {
      type = types.nullOr nixcacheTypes.httpUrl;
      default = null;
      example = "http://garage.lan:3900";
      description = "The S3 API, `http(s)://HOST[:PORT]`. Null: AWS itself.";
    };
    region = mkOption {
      type = types.nonEmptyStr;
      default = "us-east-1";
      example = "garage";
      description = "The region requests are signed for (Garage: the `s3_region` of its configuration).";
    };
    bucket = mkOption {
      type = nixcacheTypes.bucketName;
      example = "nixcache";
      description = "The bucket's name (required).";
    };
    prefix = mkOption {
      type = nixcacheTypes.bucketPrefix;
      default = "";
      example = "team/nix";
      description = "A folder in the bucket the cache is laid out under; `\"\"`: its root.";
    };
    pathStyle = mkOption {
      type = types.bool;
      default = true;
      description = "Path-style requests (`endpoint/bucket/key`); false for virtual-hosted ones (`bucket.endpoint/key`).";
    };
    accessKeyIdFile = mkOption {
      type = nixcacheTypes.absolutePath;
      example = "/var/lib/nixcache-s3/key-id";
      description = ''
        File holding the access key id (required). Handed to the service with LoadCredential as
        `s3-access-key-id`; give it as a string, never in the Nix store.
      '';
    };
    secretAccessKeyFile = mkOption {
      type = nixcacheTypes.absolutePath;
      example = "/var/lib/nixcache-s3/secret";
      description = ''
        File holding the secret access key (required), root-only. Handed to the service with
        LoadCredential as `s3-secret-access-key`; never logged.
      '';
    };
    sessionTokenFile = mkOption {
      type = types.nullOr nixcacheTypes.absolutePath;
      default = null;
      description = "File holding a session token, for temporary credentials (LoadCredential `s3-session-token`).";
    };
    localCache = mkOption {
      type = types.bool;
      default = true;
      description = "Keep hot NARs on the local disk too, within `settings.max_size`. False: every NAR is read from the bucket.";
    };
    trustedKeys = mkOption {
      type = types.nullOr (types.listOf nixcacheTypes.publicKey);
      default = null;
      example = [ "appliance-b-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" ];
      description = ''
        Keys whose signature makes a narinfo found in the bucket acceptable: the other appliances'
        keys (this appliance's own is always trusted). Null: `settings.trusted_keys`.
      '';
    };
    timeout = mkOption {
      type = types.nullOr nixcacheTypes.seconds;
      default = null;
      description = "Seconds for one bucket request (a narinfo, the start of a NAR). Null: `settings.upstream_timeout`.";
    };
    gcMaxSize = mkOption {
      type = types.nullOr nixcacheTypes.size;
      default = null;
      example = "2TiB";
      description = ''
        Make this appliance the one that prunes the bucket to this size, deleting only what no
        appliance uses. Set it on one appliance only. Null: this appliance deletes nothing from the bucket.
      '';
    };
    multipartThreshold = mkOption {
      type = types.nullOr nixcacheTypes.size;
      default = null;
      example = "256MiB";
      description = ''
        NARs larger than this go up in 8 MiB parts, smaller ones in one conditional PUT; between 5MiB
        and 5GiB. Null: 256MiB.
      '';
    };
  };

  config = lib.mkIf (cfg.enable && b.enable) {
    assertions = lib.mapAttrsToList (name: file: {
      assertion = !inStore file;
      message = "services.nixcache.bucket.${secretOptions.${name}} is in the Nix store, which every local user can read: give the path of a root-only file, as a string.";
    }) secretFiles;

    services.nixcache = {
      credentials = secretFiles;
      generatedSettings.bucket = {
        inherit (b)
          endpoint
          region
          bucket
          prefix
          timeout
          ;
        path_style = b.pathStyle;
        access_key_id_file = credentialFile "s3-access-key-id";
        secret_access_key_file = credentialFile "s3-secret-access-key";
        session_token_file = credentialFile "s3-session-token";
        local_cache = b.localCache;
        trusted_keys = b.trustedKeys;
        gc_max_size = b.gcMaxSize;
        multipart_threshold = b.multipartThreshold;
      };
    };
  };
}
